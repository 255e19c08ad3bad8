"""Optional API keys, and the signed stream tokens that let a browser's EventSource (which cannot
send headers) open one task's stream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from delivery.errors import AuthenticationRequiredError, ForbiddenError
from delivery.settings import Settings

HOW = "send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`"
ANONYMOUS = "anonymous"


def decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers as a dict (names are lower-case there already)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}


def fingerprint(key: str) -> str:
    """Names a key in logs without revealing it."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Auth:
    def __init__(self, settings: Settings) -> None:
        self._keys = {k.strip() for k in settings.api_keys.split(",") if k.strip()}
        secret = settings.stream_token_secret or "\n".join(sorted(self._keys))
        # Every replica configured with the same keys (or secret) accepts the same tokens.
        self._secret = hashlib.sha256(b"stream-token\n" + secret.encode()).digest()
        self._ttl_s = settings.stream_token_ttl_s

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @staticmethod
    def presented_key(headers: Mapping[str, str]) -> str | None:
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return authorization[7:].strip() or None
        return headers.get("x-api-key") or None

    def caller(self, headers: Mapping[str, str]) -> str:
        """Who is asking ("anonymous" when keys are off); raises when a required key is
        missing (401) or wrong (403)."""
        if not self._keys:
            return ANONYMOUS
        key = self.presented_key(headers)
        if key is None:
            raise AuthenticationRequiredError(f"This server requires an API key: {HOW}.")
        # Bytes, not str: compare_digest refuses str with non-ASCII characters, and a header
        # may carry any byte.
        presented = key.encode()
        if not any(hmac.compare_digest(presented, k.encode()) for k in self._keys):
            raise ForbiddenError(
                f"The API key {fingerprint(key)} is not valid here; check the key you "
                "were given (keys are set by the operator in API_KEYS)."
            )
        return fingerprint(key)

    def stream_token(self, task_id: str) -> tuple[str, float]:
        expires = int(time.time() + self._ttl_s)
        return f"{expires}.{self._sign(task_id, expires)}", float(expires)

    def check_stream_token(self, token: str, task_id: str) -> None:
        expires_text, _, signature = token.partition(".")
        well_formed = expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12
        if not well_formed or not hmac.compare_digest(
            signature.encode(), self._sign(task_id, int(expires_text)).encode()
        ):
            raise ForbiddenError(
                "The stream token is not valid for this task; use the stream_token "
                "returned by POST /api/run_task or POST /api/task/{id}/stream_token."
            )
        if int(expires_text) < time.time():
            raise ForbiddenError("The stream token has expired; get a new one with POST /api/task/{id}/stream_token.")

    def _sign(self, task_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{task_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")
