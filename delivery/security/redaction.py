"""What must never be shown: credentials written into a URL (`http://user:password@host/v1`,
`redis://:password@host`, `?api_key=…`). The settings that hold such URLs (OPENAI_BASE_URL,
REDIS_URL, DATABASE_URL, CELERY_BROKER_URL, WEBHOOK_URLS, OTEL_EXPORTER_OTLP_ENDPOINT) reach
/healthz (open by design), /readyz, logs, events, traces and error messages, through our code
and through libraries' exception texts: `redacted_url` cleans one URL where we show it,
`redacted_text` any text on its way out (every log line, /readyz, span attributes, `error`
events)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# Query parameters whose value is a secret by name (api_key, access_token, sig, password, ...).
_SECRET_NAME = r"[^=&#\s]*(?:key|token|secret|password|passwd|pwd|sig|signature|auth)[^=&#\s]*"
_SECRET_PARAM = re.compile(rf"(?i)([?&]{_SECRET_NAME}=)[^&#\s'\"<>]*")
# The user information of a URL inside any text: from `scheme://` to the last `@` before the
# host ends (a password may itself contain an unescaped `@`; whitespace, a path or a quote ends it).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@'\"<>]*(?:@[^\s/?#@'\"<>]*)*@")


def redacted_url(url: str) -> str:
    """`url` with the user and password replaced by ***, and secret-looking query values too."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # not a URL we can read: show nothing of it that could be a secret
        return HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        host = f"[{host}]" if ":" in host else host
        netloc = f"{HIDDEN}@{host}{f':{port}' if port else ''}"
    query = _SECRET_PARAM.sub(rf"\g<1>{HIDDEN}", "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redacted_text(text: str) -> str:
    """`text` with every URL's user information and every secret-looking query value replaced by
    ***; the rest is left as it was. Cheap when there is nothing to hide (no `://`, `?` or `&`)."""
    if "://" in text:
        text = _USERINFO.sub(rf"\g<1>{HIDDEN}@", text)
    if "?" in text or "&" in text:
        text = _SECRET_PARAM.sub(rf"\g<1>{HIDDEN}", text)
    return text
