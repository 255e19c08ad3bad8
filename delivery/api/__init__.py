"""The HTTP API: request and response models, the /api routes and the SSE stream route."""
