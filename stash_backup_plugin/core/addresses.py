"""Where to reach a server from the address it binds. Stash's `host` setting (and the
plugin input's Host) is a bind address: a wildcard means "every interface", which a
client reaches through loopback. Stash writes an IPv6 address in brackets when it
joins host and port ("[::]:9999"), so either spelling may come in."""

from __future__ import annotations

_WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def reachable_host(bind_host: str) -> str:
    """The host to connect to, without brackets: loopback for a wildcard bind."""
    host = str(bind_host or "").strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _WILDCARD_TO_LOOPBACK.get(host, host)


def url_host(host: str) -> str:
    """A host as it stands in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
