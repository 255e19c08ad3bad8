"""The address rules, and the pinning that makes each attempt connect to the address checked."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading

import httpx
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
            "https://bücher.example:8443/in",
            "93.184.216.34",
            PinnedRequest("https://93.184.216.34:8443/in", "xn--bcher-kva.example:8443", "xn--bcher-kva.example"),
        ),
        (
            "http://[2606:2800:220:1::248]/in",
            "2606:2800:220:1::248",
            PinnedRequest("http://[2606:2800:220:1::248]/in", "[2606:2800:220:1::248]", None),
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


def test_a_pinned_https_request_verifies_the_certificate_of_the_original_host(tmp_path):
    """What WebhookSender.attempt does, against a real TLS server whose certificate names only
    hooks.test: the request goes to 127.0.0.1 and the certificate check still passes (by the
    TLS server name); without it, it fails."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=hooks.test",
            "-addext",
            "subjectAltName=DNS:hooks.test",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    seen: list[str] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append(self.headers["host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    pinned = pin(f"https://hooks.test:{port}/in", "127.0.0.1")
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))) as client:
            sni = {"sni_hostname": pinned.sni_hostname}
            answer = client.post(pinned.url, content=b"{}", headers={"host": pinned.host}, extensions=sni)
            assert answer.status_code == 204 and seen == [f"hooks.test:{port}"]
            with pytest.raises(httpx.ConnectError):  # the certificate does not name 127.0.0.1
                client.post(pinned.url, content=b"{}", headers={"host": pinned.host})
    finally:
        server.shutdown()
