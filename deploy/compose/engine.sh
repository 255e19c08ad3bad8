#!/usr/bin/env bash
# A container engine for `docker compose` on a plain Debian bookworm machine without an image
# registry: podman (runc, netavark) behind its Docker-compatible socket, Docker Compose v2 as a
# CLI plugin, and stand-ins for the official images built locally from Debian packages.
# tests/compose/test_compose.py (make compose-test) uses it; so can you (docs/operations.md, "Deployment").
#
#   deploy/compose/engine.sh up      install what is missing, start the socket service, build the
#                                    stand-in images; prints the environment for `docker compose`
#   deploy/compose/engine.sh env     print that environment (KEY=value lines, for `export` / eval)
#   deploy/compose/engine.sh down    stop the socket service (and health timer) this script started
#
# Idempotent; a second `up` takes seconds: packages are checked by their binaries, the Compose
# binary and containers.conf are kept in STATE_DIR, and images are tagged with a hash of the files
# that define them (this script and deploy/compose/images/), so only a changed definition rebuilds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${MAD_ENGINE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/multi-agent-delivery/compose}"
SOCK="$STATE_DIR/podman.sock"
PIDFILE="$STATE_DIR/podman-service.pid"
TIMER_PIDFILE="$STATE_DIR/health-timer.pid"
CONF="$STATE_DIR/containers.conf"
DOCKER_CONFIG_DIR="$STATE_DIR/docker-config"
COMPOSE_PLUGIN="$DOCKER_CONFIG_DIR/cli-plugins/docker-compose"
COMPOSE_SUITE=trixie   # Compose v2 (2.26) is packaged in trixie; bookworm has only v1
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# Debian packages: binary that proves each is installed. (docker.io only for its CLI where no docker
# is on PATH; bookworm packages the CLI with the daemon, which is never started or used here.)
PACKAGES="podman:/usr/bin/podman buildah:/usr/bin/buildah runc:/usr/sbin/runc \
netavark:/usr/lib/podman/netavark aardvark-dns:/usr/lib/podman/aardvark-dns \
slirp4netns:/usr/bin/slirp4netns passt:/usr/bin/passt fuse-overlayfs:/usr/bin/fuse-overlayfs \
uidmap:/usr/bin/newuidmap iptables:/usr/sbin/iptables mmdebstrap:/usr/bin/mmdebstrap \
docker.io:/usr/bin/docker"

log() { echo "engine: $*" >&2; }

install_packages() {
  local missing="" pair
  for pair in $PACKAGES; do
    # any docker CLI will do (this machine may have one outside /usr/bin)
    if [ "${pair%%:*}" = docker.io ] && command -v docker >/dev/null; then continue; fi
    [ -e "${pair#*:}" ] || missing="$missing ${pair%%:*}"
  done
  [ -z "$missing" ] && return
  log "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
}

# The Debian mirror this machine uses (deb822 or one-line sources), for trixie and for mmdebstrap.
debian_mirror() {
  local uri
  uri=$(grep -hoE '^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '[a-z]+://[^[:space:]]+' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

install_compose() {
  [ -x "$COMPOSE_PLUGIN" ] && return
  local tmp mirror deb
  tmp=$(mktemp -d /tmp/mad-compose-apt.XXXXXX)
  mirror=$(debian_mirror)
  log "fetching Compose v2 from $COMPOSE_SUITE's docker-compose package ($mirror)"
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $COMPOSE_SUITE main" \
    > "$tmp/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=root" -qq)
  apt-get "${opts[@]}" update >&2
  (cd "$tmp/deb" && apt-get "${opts[@]}" download docker-compose >&2)
  deb=$(ls "$tmp"/deb/docker-compose_*.deb)
  dpkg-deb -x "$deb" "$tmp/root"
  mkdir -p "$(dirname "$COMPOSE_PLUGIN")"
  install -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" "$COMPOSE_PLUGIN"
  rm -rf "$tmp"
}

write_conf() {
  # default ulimits below this machine's hard limits (podman's defaults may exceed them and then
  # every container fails to start); nproc above 32768 failed on such a machine.
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  [ "$nofile" -gt 1048576 ] && nofile=1048576
  mkdir -p "$STATE_DIR"
  cat > "$CONF.new" <<EOF
# Written by deploy/compose/engine.sh
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
# crun refuses a hybrid cgroup layout ("cgroups in hybrid mode not supported"); runc works
runtime = "runc"
[network]
network_backend = "netavark"
EOF
  if cmp -s "$CONF.new" "$CONF"; then rm "$CONF.new"; else mv "$CONF.new" "$CONF"; fi
}

print_env() {
  cat <<EOF
CONTAINERS_CONF=$CONF
DOCKER_HOST=unix://$SOCK
DOCKER_CONFIG=$DOCKER_CONFIG_DIR
DOCKER_BUILDKIT=0
COMPOSE_DOCKER_CLI_BUILD=0
$(image_env)
EOF
}

service_running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [ -S "$SOCK" ]
}

# Without systemd nothing runs podman's health checks: health_timer.py does (it says why).
start_health_timer() {
  if [ -f "$TIMER_PIDFILE" ] && kill -0 "$(cat "$TIMER_PIDFILE")" 2>/dev/null; then return; fi
  if [ -d /run/systemd/system ]; then return; fi   # systemd's timers run them
  setsid python3 "$HERE/health_timer.py" "$SOCK" > "$STATE_DIR/health-timer.log" 2>&1 < /dev/null &
  echo $! > "$TIMER_PIDFILE"
}

start_service() {
  if service_running; then return; fi
  # podman's network state must match the backend before the first container (an earlier CNI
  # setup on this machine leaves nothing netavark needs)
  rm -f "$SOCK"
  log "starting podman system service on $SOCK"
  CONTAINERS_CONF="$CONF" setsid podman system service --time=0 "unix://$SOCK" \
    > "$STATE_DIR/podman-service.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  local i
  for i in $(seq 100); do
    if [ -S "$SOCK" ] && DOCKER_HOST="unix://$SOCK" docker version >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  log "podman service did not answer; see $STATE_DIR/podman-service.log"; exit 1
}

stop_pid() {
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}

stop_service() {
  [ -f "$TIMER_PIDFILE" ] && stop_pid "$TIMER_PIDFILE"
  [ -f "$PIDFILE" ] && stop_pid "$PIDFILE"
  rm -f "$SOCK"
}

# ---- images -----------------------------------------------------------------------------------
# One hash over everything that defines the images (the functions below that build them, their
# Dockerfiles, the host's extra CA files): change one, get new tags; change nothing, build nothing.
images_hash() {
  { declare -f build_base build_image
    (cd "$HERE" && cat $(find images -type f | LC_ALL=C sort))
    cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
  } | sha256sum | cut -c1-12
}
TAG=""
tag() { [ -n "$TAG" ] || TAG=$(images_hash); echo "localhost/multi-agent-delivery-standin/$1:$TAG"; }

image_env() {
  cat <<EOF
BASE_IMAGE=$(tag python)
REDIS_IMAGE=$(tag redis)
POSTGRES_IMAGE=$(tag postgres)
NGINX_IMAGE=$(tag nginx)
PROMETHEUS_IMAGE=$(tag prometheus)
EOF
}

pm() { CONTAINERS_CONF="$CONF" podman "$@"; }
exists() { pm image exists "$1"; }

build_base() {
  local base; base=$(tag base)
  exists "$base" && return
  local tmp mirror
  tmp=$(mktemp -d /tmp/mad-rootfs.XXXXXX)
  mirror=$(debian_mirror)
  log "building the Debian bookworm base rootfs with mmdebstrap ($mirror)"
  # The host's extra CA files (e.g. an HTTPS proxy's) are trusted inside, so pip and apt in
  # builds work where the host's do.
  mkdir -p "$tmp/ca"
  cp /usr/local/share/ca-certificates/*.crt "$tmp/ca/" 2>/dev/null || true
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=ca-certificates,python3,python3-venv \
    --customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\"" \
    --customize-hook="cp $tmp/ca/. \"\$1/usr/local/share/ca-certificates/\" -r" \
    --customize-hook="chroot \"\$1\" update-ca-certificates >/dev/null" \
    --customize-hook="rm -rf \"\$1\"/var/lib/apt/lists/* \"\$1\"/var/cache/apt/*.bin" \
    bookworm "$tmp/rootfs.tar" "$mirror" >&2
  pm import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tmp/rootfs.tar" "$base" >/dev/null
  rm -rf "$tmp"
}

build_image() {  # name [parent-name]
  local name=$1 image; image=$(tag "$1")
  exists "$image" && return
  log "building stand-in $image"
  pm build --quiet --build-arg "BASE=$(tag "${2:-base}")" -t "$image" "$HERE/images/$name" >/dev/null
}

build_images() {
  build_base
  build_image python
  build_image services
  local name
  for name in redis postgres nginx prometheus; do build_image "$name" services; done
  # stand-ins of earlier definitions go (their layers are not shared with the new ones)
  local old
  for old in $(pm images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/multi-agent-delivery-standin/' \
                 | grep -v ":$(images_hash)\$" || true); do
    pm rmi "$old" >/dev/null 2>&1 || true
  done
}

case "${1:-}" in
  up)
    install_packages
    install_compose
    write_conf
    start_service
    start_health_timer
    build_images
    print_env
    ;;
  env) print_env ;;
  down) stop_service ;;
  *) echo "usage: $0 up|env|down" >&2; exit 2 ;;
esac
