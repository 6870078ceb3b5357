"""Reaching a server from its bind address: one rule for the plugin and the restore's probe."""

import pytest

from stash_backup_plugin.core.addresses import reachable_host, url_host


@pytest.mark.parametrize(
    "bind, expected",
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        (None, "127.0.0.1"),
        ("::", "::1"),
        ("[::]", "::1"),  # Stash writes IPv6 in brackets when it joins host and port
        ("192.168.1.5", "192.168.1.5"),
        ("[fe80::1]", "fe80::1"),
        ("stash.local", "stash.local"),
    ],
)
def test_a_wildcard_bind_is_reached_through_loopback(bind, expected):
    assert reachable_host(bind) == expected


def test_an_ipv6_host_is_bracketed_in_a_url_once():
    assert url_host("::1") == "[::1]" and url_host("[::1]") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1"


def test_the_restore_probe_reaches_a_stash_bound_to_bracketed_ipv6(tmp_path):
    """config.yml may say host: "[::]": the probe must knock on ::1, not fail to resolve "[::]"."""
    import socket
    from stash_backup_plugin.offline.liveness import Finding, _probe_port

    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        finding = Finding()
        _probe_port("[::]", listener.getsockname()[1], finding)
    assert finding.suspected and "[::1]" in finding.suspected[0]
