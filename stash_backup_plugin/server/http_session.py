"""The one place that builds HTTP sessions: credentials attached, redirects to any
other origin refused (our ApiKey header would follow them), and https pinned to the
server's own certificate when a plugin talks to its server over loopback."""
from __future__ import annotations

import urllib.request
from http.cookiejar import eff_request_host
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .connection import Connection

USER_AGENT = "stash-backup"


class _PinnedAdapter(HTTPAdapter):
    """Accept exactly the server's own certificate (by SHA-256), whatever name it has."""

    def __init__(self, fingerprint: str, **kwargs):
        self._fingerprint = fingerprint
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["assert_fingerprint"] = self._fingerprint
        return super().init_poolmanager(*args, **kwargs)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _cookie_domain(url: str) -> str:
    """The host as the cookie jar matches requests against it (http.cookiejar's
    effective host): the port cut, an IPv6 address still in brackets, and ".local"
    added to a name without a dot. urlsplit's hostname ("::1", "localhost") never
    matches: no cookie would be sent."""
    return eff_request_host(urllib.request.Request(url))[1]


def harden(session: requests.Session, connection: Connection) -> requests.Session:
    session.headers.update({"User-Agent": USER_AGENT, **connection.auth_headers()})
    for name, value in connection.auth_cookies().items():
        session.cookies.set(name, value, domain=_cookie_domain(connection.base_url))
    home = _origin(connection.base_url)
    original = session.get_redirect_target

    def same_origin_redirect_only(response):
        target = original(response)
        if target and _origin(requests.compat.urljoin(response.url, target)) not in (home, ("", "")):
            return None  # hand the 3xx back to the caller instead of following it
        return target

    session.get_redirect_target = same_origin_redirect_only
    if connection.pinned_certificate:
        session.mount("https://", _PinnedAdapter(connection.pinned_certificate))
        # The fingerprint replaces CA and name checks; urllib3 still enforces it.
        # trust_env off: REQUESTS_CA_BUNDLE would otherwise switch CA checks back on
        # (requests lets it override session.verify), and a plugin on loopback needs
        # no proxy from the environment.
        session.verify = False
        session.trust_env = False
    return session


def new_session(connection: Connection) -> requests.Session:
    return harden(requests.Session(), connection)
