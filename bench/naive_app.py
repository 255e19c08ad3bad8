"""The service with the seed's streaming design swapped in (benchmark baseline only)."""

import stream_manager
from naive_stream_manager import NaiveStreamManager

stream_manager.StreamManager._instance = NaiveStreamManager()

from main import app  # noqa: E402,F401
