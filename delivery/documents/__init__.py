"""The documents the crew writes: traceability between them, rendering, and the zip package."""
