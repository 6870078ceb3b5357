"""Where requests go: URL rebasing, plugin connection, redaction."""

import pytest

from stash_backup_plugin.server.connection import Connection, from_plugin_input, normalise_url, redact
from stash_backup_plugin.core.errors import ConfigError, UsageError


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


@pytest.mark.parametrize(
    "given,expected",
    [
        ("localhost:9999", "http://localhost:9999"),
        ("http://h:1/", "http://h:1"),
        ("https://h/stash/graphql", "https://h/stash"),
    ],
)
def test_normalise_url(given, expected):
    assert normalise_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://x", "http://", "://"])
def test_normalise_url_rejects(bad):
    with pytest.raises(UsageError):
        normalise_url(bad)


@pytest.mark.parametrize(
    "host,expected", [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("", "127.0.0.1"), ("192.168.1.5", "192.168.1.5")]
)
def test_plugin_bind_address_means_loopback(host, expected):
    connection = from_plugin_input(
        {"Scheme": "http", "Host": host, "Port": 9999, "SessionCookie": {"Name": "session", "Value": "cookie-value"}}
    )
    assert connection.base_url == f"http://{expected}:9999"
    assert connection.auth_cookies() == {"session": "cookie-value"}


def test_api_key_wins_over_the_session_cookie():
    connection = from_plugin_input({"Host": "0.0.0.0", "Port": 1, "SessionCookie": {"Value": "c"}}, api_key="k")
    assert connection.auth_headers() == {"ApiKey": "k"} and connection.auth_cookies() == {}


def _openssl(*args):
    import subprocess

    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def _chain(folder):
    """A leaf certificate signed by a CA of its own, and Stash's ssl_cert_path file as
    certbot writes it: fullchain.pem, the leaf first, then the CA. The leaf is made
    until its DER length is a multiple of 3: its base64 then ends without `=` padding,
    and a reader that decodes the whole file as one blob runs on into the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-subj",
        "/CN=Test CA",
        "-keyout",
        str(folder / "ca.key"),
        "-out",
        str(folder / "ca.crt"),
        "-days",
        "2",
    )
    for attempt in range(60):
        _openssl(
            "req",
            "-new",
            *ec,
            "-subj",
            f"/CN={'s' * attempt}stash.example",
            "-keyout",
            str(folder / "leaf.key"),
            "-out",
            str(folder / "leaf.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(folder / "leaf.csr"),
            "-CA",
            str(folder / "ca.crt"),
            "-CAkey",
            str(folder / "ca.key"),
            "-CAcreateserial",
            "-out",
            str(folder / "leaf.crt"),
            "-days",
            "2",
        )
        if len(_openssl("x509", "-in", str(folder / "leaf.crt"), "-outform", "DER")) % 3 == 0:
            break
    else:
        raise AssertionError("could not make a leaf certificate of the wanted length")
    fullchain = folder / "fullchain.pem"
    fullchain.write_bytes((folder / "leaf.crt").read_bytes() + (folder / "ca.crt").read_bytes())
    return fullchain, folder / "leaf.key"


def _sha256_of_der(certificate):
    import hashlib

    return hashlib.sha256(_openssl("x509", "-in", str(certificate), "-outform", "DER")).hexdigest()


def _as_pkcs12_export(fullchain):
    """The same chain as `openssl pkcs12 -nokeys` writes it: each certificate after
    lines of text (Bag Attributes, subject=, issuer=)."""
    blocks = fullchain.read_text().split("-----END CERTIFICATE-----\n")[:-1]
    text = "".join(
        f"Bag Attributes\n    friendlyName: stash\nsubject=/CN=x\nissuer=/CN=y\n{block}-----END CERTIFICATE-----\n"
        for block in blocks
    )
    exported = fullchain.with_name("exported.pem")
    exported.write_text(text)
    return exported


@pytest.mark.parametrize("layout", ["fullchain", "pkcs12-export"])
def test_https_plugin_connection_pins_the_servers_certificate(tmp_path, layout):
    fullchain, _ = _chain(tmp_path)
    certificate = fullchain if layout == "fullchain" else _as_pkcs12_export(fullchain)
    connection = from_plugin_input(
        {"Scheme": "https", "Host": "0.0.0.0", "Port": 9999, "Dir": str(tmp_path)}, certificate=certificate
    )
    assert connection.base_url == "https://127.0.0.1:9999"
    assert connection.pinned_certificate == _sha256_of_der(tmp_path / "leaf.crt")  # the leaf, not the CA


def test_a_single_certificate_in_stash_crt_is_pinned(tmp_path):
    cert, _ = _certificate(tmp_path, "stash")
    connection = from_plugin_input({"Scheme": "https", "Host": "0.0.0.0", "Port": 9999, "Dir": str(tmp_path)})
    assert connection.pinned_certificate == _sha256_of_der(cert)


@pytest.mark.parametrize(
    "content", [b"", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", b"\x30\x82\xff\xfe binary DER"]
)
def test_a_file_without_a_pem_certificate_is_a_config_error(tmp_path, content):
    (tmp_path / "stash.crt").write_bytes(content)
    with pytest.raises(ConfigError, match="holds no readable PEM certificate"):
        from_plugin_input({"Scheme": "https", "Host": "0.0.0.0", "Port": 9999, "Dir": str(tmp_path)})


def test_redact_removes_every_secret():
    assert redact("key=abc123 cookie=zzz", ["abc123", "zzz", ""]) == "key=[redacted] cookie=[redacted]"


def _certificate(folder, name):
    import subprocess

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(folder / f"{name}.key"),
            "-out",
            str(folder / f"{name}.crt"),
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
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


def test_pinned_session_talks_to_a_server_that_serves_a_full_chain(tmp_path):
    """ssl_cert_path is often a fullchain.pem: Stash serves the whole chain and we pin its first."""
    from stash_backup_plugin.server.http_session import new_session

    fullchain, key = _chain(tmp_path)
    server = _tls_server(fullchain, key)
    try:
        port = server.server_address[1]
        connection = from_plugin_input({"Scheme": "https", "Host": "0.0.0.0", "Port": port}, certificate=fullchain)
        assert new_session(connection).get(f"{connection.base_url}/x", timeout=5).text == "hello"
    finally:
        server.shutdown()


def _cookie_echo_server(host):
    """A plain HTTP server on `host` that answers with the Cookie header it got."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = (self.headers.get("Cookie") or "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(HTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    "bind,loopback",
    [
        ("[::]", "::1"),
        ("::", "::1"),
        ("[::1]", "::1"),
        ("0.0.0.0", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_the_session_cookie_reaches_a_stash_bound_to_any_address(bind, loopback):
    """Stash bound to [::] hands the plugin Host "[::]": we talk to [::1], and the
    cookie must be sent there too."""
    from stash_backup_plugin.server.http_session import new_session

    server = _cookie_echo_server(loopback)
    try:
        connection = from_plugin_input(
            {
                "Scheme": "http",
                "Host": bind,
                "Port": server.server_address[1],
                "SessionCookie": {"Name": "session", "Value": "cookie-value"},
            }
        )
        assert new_session(connection).get(f"{connection.base_url}/graphql", timeout=5).text == "session=cookie-value"
    finally:
        server.shutdown()
