"""Where requests go: URL rebasing, plugin connection, redaction."""
import pytest

from stash_backup_plugin.server.connection import Connection, from_plugin_input, normalise_url, redact
from stash_backup_plugin.core.errors import UsageError


def test_download_link_is_rebased_onto_the_graphql_origin():
    connection = Connection("http://127.0.0.1:9999")
    link = "https://stash.example.com/downloads/abcd1234/stash-go.sqlite.85.20261126_180102.zip"
    assert connection.rebase(link) == "http://127.0.0.1:9999/downloads/abcd1234/stash-go.sqlite.85.20261126_180102.zip"


def test_rebase_keeps_our_path_prefix_and_drops_theirs():
    connection = Connection("https://nas.local/stash")
    link = "http://public.example/proxy/prefix/downloads/ff/x.sqlite.1.20260101_000000"
    assert connection.rebase(link) == "https://nas.local/stash/downloads/ff/x.sqlite.1.20260101_000000"


def test_rebase_refuses_links_that_are_not_downloads():
    with pytest.raises(UsageError):
        Connection("http://127.0.0.1:9999").rebase("http://evil.example/steal")


@pytest.mark.parametrize("given,expected", [
    ("localhost:9999", "http://localhost:9999"), ("http://h:1/", "http://h:1"),
    ("https://h/stash/graphql", "https://h/stash"),
])
def test_normalise_url(given, expected):
    assert normalise_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://x", "http://", "://"])
def test_normalise_url_rejects(bad):
    with pytest.raises(UsageError):
        normalise_url(bad)


@pytest.mark.parametrize("host,expected", [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("", "127.0.0.1"),
                                           ("192.168.1.5", "192.168.1.5")])
def test_plugin_bind_address_means_loopback(host, expected):
    connection = from_plugin_input({"Scheme": "http", "Host": host, "Port": 9999,
                                    "SessionCookie": {"Name": "session", "Value": "cookie-value"}})
    assert connection.base_url == f"http://{expected}:9999"
    assert connection.auth_cookies() == {"session": "cookie-value"}


def test_api_key_wins_over_the_session_cookie():
    connection = from_plugin_input({"Host": "0.0.0.0", "Port": 1, "SessionCookie": {"Value": "c"}}, api_key="k")
    assert connection.auth_headers() == {"ApiKey": "k"} and connection.auth_cookies() == {}


def test_https_plugin_connection_pins_the_servers_certificate(tmp_path):
    import subprocess
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=stash.example",
                    "-keyout", str(tmp_path / "stash.key"), "-out", str(tmp_path / "stash.crt"), "-days", "2"],
                   check=True, capture_output=True)
    connection = from_plugin_input({"Scheme": "https", "Host": "0.0.0.0", "Port": 9999, "Dir": str(tmp_path)})
    assert connection.base_url == "https://127.0.0.1:9999"
    assert len(connection.pinned_certificate) == 64


def test_redact_removes_every_secret():
    assert redact("key=abc123 cookie=zzz", ["abc123", "zzz", ""]) == "key=[redacted] cookie=[redacted]"


def _certificate(folder, name):
    import subprocess
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                    "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"), "-days", "2"],
                   check=True, capture_output=True)
    return folder / f"{name}.crt", folder / f"{name}.key"


def _tls_server(cert, key):
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_pinned_session_accepts_only_the_servers_own_certificate(tmp_path, monkeypatch):
    import requests
    from stash_backup_plugin.server.http_session import new_session
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")  # must not re-enable CA checks
    real_cert, real_key = _certificate(tmp_path, "stash.example")
    other_cert, _ = _certificate(tmp_path, "attacker.example")
    server = _tls_server(real_cert, real_key)
    try:
        port = server.server_address[1]
        (tmp_path / "stash.crt").write_bytes(real_cert.read_bytes())
        good = from_plugin_input({"Scheme": "https", "Host": "0.0.0.0", "Port": port, "Dir": str(tmp_path)})
        assert new_session(good).get(f"{good.base_url}/x", timeout=5).text == "hello"
        bad = from_plugin_input({"Scheme": "https", "Host": "0.0.0.0", "Port": port}, certificate=other_cert)
        with pytest.raises(requests.exceptions.SSLError):
            new_session(bad).get(f"{bad.base_url}/x", timeout=5)
    finally:
        server.shutdown()
