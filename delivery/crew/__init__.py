"""The crew's supporting parts: its roster, read from agents_config, and CrewAI's internals."""
