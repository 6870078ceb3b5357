"""The one place that builds HTTP sessions: credentials attached, redirects to any
other origin refused (our ApiKey header would follow them), https pinned to the
server's own certificate when a plugin talks to its server over loopback, and every
answer that is read whole (GraphQL; not the streamed backup download) bounded in size."""

from __future__ import annotations

import urllib.request
from http.cookiejar import eff_request_host
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .connection import Connection
from ..core.bounded import read_bounded

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


def _read_whole_answer(response: requests.Response, stream: bool = False, **_) -> requests.Response:
    """A response hook: the body of a request that is not streamed, read here within
    read_bounded's limit, before requests would read (and inflate) all of it."""
    if stream:
        return response  # the backup download: written to disk as it arrives (download.py)
    try:
        body = _bounded_body(response)
    except BaseException:
        response.close()  # read in part: the connection cannot serve another request
        raise
    response._content = body  # requests' own slot for a body read whole; its decoders are bypassed
    response._content_consumed = True
    return response


def _bounded_body(response: requests.Response) -> bytes:
    import urllib3.exceptions

    try:
        return read_bounded(
            lambda size: response.raw.read(size, decode_content=False),
            f"the server at {_origin(response.url)[1]}",
            response.headers.get("Content-Encoding", ""),
        )
    except urllib3.exceptions.ReadTimeoutError as error:  # as requests itself would raise them
        raise requests.exceptions.ReadTimeout(error, response=response) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise requests.exceptions.ConnectionError(error, response=response) from None


def harden(session: requests.Session, connection: Connection) -> requests.Session:
    # gzip only: the one encoding read_bounded inflates (requests would also offer br and zstd)
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "gzip", **connection.auth_headers()})
    session.hooks["response"].append(_read_whole_answer)
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
