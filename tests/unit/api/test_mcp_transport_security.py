"""Which Host and Origin headers the MCP door answers (the SDK's DNS-rebinding check), from
MCP_ALLOWED_HOSTS, HOST and CORS_ORIGINS."""

from __future__ import annotations

from delivery.api.mcp import transport_security
from delivery.settings import Settings


def settings(**values: str) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_a_loopback_server_answers_its_local_names_only():
    checked = transport_security(settings(host="127.0.0.1"))
    assert checked.enable_dns_rebinding_protection
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*", "localhost"} <= set(checked.allowed_hosts)
    assert not any("example" in h for h in checked.allowed_hosts)
    assert "http://localhost:*" in checked.allowed_origins


def test_a_server_on_other_interfaces_checks_nothing_unless_given_its_names():
    assert not transport_security(settings(host="0.0.0.0")).enable_dns_rebinding_protection
    named = transport_security(
        settings(host="0.0.0.0", mcp_allowed_hosts="delivery.example.com", cors_origins="https://app.example.org")
    )
    assert named.enable_dns_rebinding_protection
    assert {"delivery.example.com", "delivery.example.com:*", "localhost:*"} <= set(named.allowed_hosts)
    assert {"https://delivery.example.com", "https://app.example.org"} <= set(named.allowed_origins)


def test_a_star_turns_the_check_off():
    assert not transport_security(settings(host="127.0.0.1", mcp_allowed_hosts="*")).enable_dns_rebinding_protection
