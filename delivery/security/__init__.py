"""Exposure controls: API keys and stream tokens, rate limits, request limits and the audit log."""
