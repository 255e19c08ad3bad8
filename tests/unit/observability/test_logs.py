"""No log line shows a credential written into a URL, in its message or its traceback."""

from __future__ import annotations

import json
import logging

from delivery.observability.logs import JsonFormatter, _TextFormatter


def record_with_a_url() -> logging.LogRecord:
    try:
        raise ConnectionError("cannot reach redis://default:hunter2@cache:6379/0")
    except ConnectionError:
        import sys

        return logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "model at %s refused", ("http://alice:pw1@h/v1",), sys.exc_info()
        )


def test_json_lines_hide_credentials() -> None:
    line = json.loads(JsonFormatter().format(record_with_a_url()))
    assert line["message"] == "model at http://***@h/v1 refused"
    assert "redis://***@cache:6379/0" in line["exception"] and "hunter2" not in line["exception"]


def test_text_lines_hide_credentials() -> None:
    text = _TextFormatter("%(levelname)s %(message)s").format(record_with_a_url())
    assert text.startswith("ERROR model at http://***@h/v1 refused") and "pw1" not in text and "hunter2" not in text
