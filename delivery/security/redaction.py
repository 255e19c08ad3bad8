"""What must never be shown: credentials written into a URL (`http://user:password@host/v1`,
`?api_key=…`). Settings such as OPENAI_BASE_URL surface in /healthz (open by design), logs,
events and traces through the model's label; each is shown redacted."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# Query parameters whose value is a secret by name (api_key, access_token, sig, password, ...).
_SECRET_PARAM = re.compile(
    r"(?i)([?&][^=&#]*(?:key|token|secret|password|passwd|pwd|sig|signature|auth)[^=&#]*=)[^&#]*"
)


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
