#!/bin/sh
# As the official image: redis-server runs as the redis user, with protected mode off (appended
# last, so it wins over the defaults; the official image compiles it off).
set -e
if [ "$1" = redis-server ]; then
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$@" --protected-mode no
fi
exec "$@"
