"""Where notifications may go: http(s) URLs whose host resolves only to public addresses.

A service that POSTs to URLs its callers choose can be aimed at what sits behind it (cloud
metadata at 169.254.169.254, Redis on 127.0.0.1, the private network). Unless the operator sets
WEBHOOK_ALLOW_PRIVATE, every address the host resolves to must be global; the check runs when a
URL is submitted and again before every attempt (DNS answers change), and each attempt connects
to the address that was checked (`pin`)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_URL_CHARS = 2048


class AddressNotAllowedError(ValueError):
    """The URL is malformed, unresolvable or points where notifications may not go."""


def check_url(url: str, allow_private: bool) -> str:
    """Raise AddressNotAllowedError, saying why, unless notifications may be sent to `url`;
    return the (checked) address to connect to."""
    if len(url) > MAX_URL_CHARS:
        raise AddressNotAllowedError(f"is {len(url)} characters long; at most {MAX_URL_CHARS} are allowed")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise AddressNotAllowedError(f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressNotAllowedError("must be an http:// or https:// URL with a host, e.g. https://example.com/hook")
    if parts.username or parts.password:
        raise AddressNotAllowedError("must not carry credentials; authenticate the notification by its signature")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # ValueError: NUL; UnicodeError: a label IDNA refuses
        raise AddressNotAllowedError(f"has a host that does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not allow_private:
        for address in addresses:
            if not address.is_global or address.is_multicast:
                raise AddressNotAllowedError(
                    f"resolves to {address}, a loopback, link-local, private or reserved address; "
                    "notifications go to public addresses only (the operator can allow others with "
                    "WEBHOOK_ALLOW_PRIVATE=true)"
                )
    return str(addresses[0])


@dataclass(frozen=True)
class PinnedRequest:
    """A request to the address that was checked, not to whatever the name resolves to by the
    time the connection is made (DNS rebinding): the URL names the address; the Host header and,
    for https, the TLS server name (SNI, and so the certificate check) keep the original host."""

    url: str
    host: str
    sni_hostname: str | None


def pin(url: str, address: str) -> PinnedRequest:
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    name = parts.hostname or ""
    if not name.isascii():  # an internationalised name goes on the wire in its ASCII (IDNA) form
        name = name.encode("idna").decode("ascii")
    host = f"[{name}]" if ":" in name else name
    host = f"{host}:{parts.port}" if parts.port else host
    return PinnedRequest(target, host, name if parts.scheme == "https" else None)
