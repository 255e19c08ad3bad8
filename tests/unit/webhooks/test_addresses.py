"""The address rules, and the pinning that makes each attempt connect to the address checked."""

from __future__ import annotations

import pytest

from delivery.webhooks.addresses import AddressNotAllowedError, PinnedRequest, check_url, pin


def test_a_name_resolving_to_loopback_is_refused_unless_allowed_and_the_checked_address_is_returned():
    with pytest.raises(AddressNotAllowedError, match=r"resolves to (127\.0\.0\.1|::1),"):
        check_url("http://localhost:8080/hook", allow_private=False)
    assert check_url("http://localhost:8080/hook", allow_private=True) in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("url", "address", "pinned"),
    [
        (
            "https://hooks.example.com/in?x=1",
            "93.184.216.34",
            PinnedRequest("https://93.184.216.34/in?x=1", "hooks.example.com", "hooks.example.com"),
        ),
        (
            "http://hooks.example.com:8080",
            "2606:2800:220:1::248",
            PinnedRequest("http://[2606:2800:220:1::248]:8080/", "hooks.example.com:8080", None),
        ),
    ],
)
def test_a_request_is_pinned_to_the_checked_address_keeping_host_and_tls_name(url, address, pinned):
    assert pin(url, address) == pinned
