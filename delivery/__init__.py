"""The Multi-Agent Software Delivery System.

The top-level modules are the places a user customises (main.py: the app, agents_config.py: the
crew as data, crew_factory.py: crews and CrewEventsHandler, stream_manager.py: the StreamManager,
worker.py: the Celery worker). This package holds the rest, one sub-package per part of the
architecture; docs/architecture.md is the map.
"""

__version__ = "0.4.0"
