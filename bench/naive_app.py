"""The service built with the seed's streaming design as its event backend (baseline only)."""

from bench.naive_backend import NaiveEventBackend
from main import create_app

app = create_app(event_backend=NaiveEventBackend())
