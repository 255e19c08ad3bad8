"""Helpers shared by the tests: real processes (servers, Nginx, Celery workers), real services
(Redis, PostgreSQL), an SSE reader, waiting with deadlines, and the HTTP calls tests repeat."""
