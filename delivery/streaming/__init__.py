"""Task event logs and their delivery: the backend contract, the memory and Redis backends, the
archive to the store, and serving one SSE connection."""
