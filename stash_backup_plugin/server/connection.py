"""Where the Stash server is and how we prove who we are. Pure logic, no I/O
except reading the server's own certificate for pinning."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..core.addresses import reachable_host, url_host
from ..core.errors import ConfigError, UsageError

DEFAULT_URL = "http://localhost:9999"
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class Connection:
    base_url: str  # scheme://host:port[/prefix], no trailing slash
    api_key: Optional[str] = None
    session_cookie: Optional[str] = None
    # SHA-256 of the server's own certificate (https from a plugin): the server's
    # certificate rarely names 127.0.0.1, so we pin it instead of checking names.
    pinned_certificate: Optional[str] = None

    @property
    def graphql_url(self) -> str:
        return f"{self.base_url}/graphql"

    def auth_headers(self) -> dict[str, str]:
        return {"ApiKey": self.api_key} if self.api_key else {}

    def auth_cookies(self) -> dict[str, str]:
        return {"session": self.session_cookie} if self.session_cookie and not self.api_key else {}

    @property
    def auth_description(self) -> str:
        if self.api_key:
            return "API key"
        return "session cookie" if self.session_cookie else "no credentials"

    def secrets(self) -> list[str]:
        return [s for s in (self.api_key, self.session_cookie) if s]

    def rebase(self, link: str) -> str:
        """The path of a link the server returned, on the origin we used for GraphQL.
        `external_host` and reverse proxies make the server return links to hosts we
        may not reach, and our credentials must go to no other host."""
        parts = urlsplit(link)
        path = parts.path
        prefix = urlsplit(self.base_url).path.rstrip("/")
        downloads = path.find("/downloads/")
        if downloads < 0:
            raise UsageError(f"the server returned an unexpected download link path {path!r}")
        path = prefix + path[downloads:]
        base = urlsplit(self.base_url)
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))


def normalise_url(url: str) -> str:
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid server URL {url!r}: use e.g. http://localhost:9999")
    path = parts.path.rstrip("/")
    if path.endswith("/graphql"):
        path = path[: -len("/graphql")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def from_plugin_input(
    server_connection: dict, api_key: Optional[str] = None, certificate: Optional[Path] = None
) -> Connection:
    """The connection a plugin process is given on stdin. The bind address 0.0.0.0
    (or ::) means loopback; an API key from config.yml wins over the session cookie,
    which expires. Over https the server's own certificate (`certificate`, default
    stash.crt in its config folder) is pinned."""
    scheme = server_connection.get("Scheme") or "http"
    host = url_host(reachable_host(server_connection.get("Host") or ""))
    port = server_connection.get("Port") or 9999
    cookie = (server_connection.get("SessionCookie") or {}).get("Value")
    pinned = None
    if scheme == "https":
        pinned = certificate_fingerprint(certificate or Path(server_connection.get("Dir") or ".") / "stash.crt")
    return Connection(f"{scheme}://{host}:{port}", api_key or None, cookie or None, pinned)


def certificate_fingerprint(certificate: Path) -> str:
    """SHA-256 of the server's own certificate: the first one in the file. Stash loads
    the file with Go's tls.LoadX509KeyPair, which serves the first certificate as its
    own and any after it (a fullchain.pem) as the chain; the TLS peer we pin is that first."""
    try:
        text = certificate.read_bytes().decode("ascii", errors="replace")
    except OSError as error:
        raise ConfigError(
            f"Stash serves https but its certificate {certificate} cannot be read: {error.strerror}"
        ) from error
    import ssl  # here, not at the top: commands that never talk https start faster

    leaf = _PEM_CERTIFICATE.search(text)
    try:
        if leaf:
            return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.group(0))).hexdigest()
    except ValueError:  # damaged base64 between the markers
        pass
    raise ConfigError(
        f"Stash serves https but {certificate} holds no readable PEM certificate "
        "(-----BEGIN CERTIFICATE-----): point ssl_cert_path at the certificate Stash serves"
    )


def redact(text: str, secrets: list[str]) -> str:
    """Remove secrets from text that is about to be shown or logged."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text
