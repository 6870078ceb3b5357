"""Send a notice (a failed or overdue backup) to the user's notification URLs.

An `http://` or `https://` URL is a plain webhook: we POST the notice as JSON, with
the standard library. Every other URL (ntfy://, gotify://, tgram://, discord://,
mailto://, json://, ...) goes through Apprise, an optional extra
(`pip install 'stash-backup[notify]'`). Notification URLs carry tokens and
passwords, and for some services the host part *is* the token (`pover://<user>@<token>`,
`prowl://<key>`): nothing here logs or returns a URL beyond its scheme and a short
fingerprint (`describe_url`), and Apprise's own log (which names URLs) is silenced
while it sends."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import urllib.parse
from typing import Iterator, Sequence

from ..core.reporting import Reporter
from ..core.status import Notice

WEBHOOK_TIMEOUT = 10
_SEPARATORS = re.compile(r"[\s,]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")
USER_AGENT = "stash-backup"


def parse_urls(text: str) -> list[str]:
    """URLs from a setting or an environment variable: separated by spaces, commas or lines."""
    return [url for url in _SEPARATORS.split(text or "") if url]


def describe_url(url: str) -> str:
    """A URL as it may be shown: its scheme and a fingerprint, the first 8 hex digits of
    the SHA-256 of the whole URL (`printf %s URL | sha256sum` tells which URL it is).
    No part of the URL is shown, since any part (user, host, path, query) may be the
    token. 32 bits of a hash do not give the token back: each fingerprint fits about
    2^(bits of the token - 32) URLs, and a token's 100+ random bits leave far too many."""
    scheme, separator, _ = url.partition("://")
    shown = scheme.lower() if separator and _SCHEME.fullmatch(scheme) else "?"
    return f"{shown}://… (fingerprint {url_fingerprint(url)})"


def url_fingerprint(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def is_webhook(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def send(urls: Sequence[str], notice: Notice, report: Reporter) -> int:
    """Deliver to every URL; a failure is reported (redacted) and never raised, since
    a notification must not fail the backup it reports on. Returns how many failed."""
    failed = 0
    for url in urls:
        problem = _send_webhook(url, notice) if is_webhook(url) else _send_apprise(url, notice)
        if problem:
            failed += 1
            report.warning(f"notification to {describe_url(url)} failed: {problem}")
        else:
            report.info(f"notification sent to {describe_url(url)}")
    return failed


def _send_webhook(url: str, notice: Notice) -> str:
    payload = json.dumps(
        {"title": notice.title, "message": notice.body, "type": notice.kind, "source": "stash-backup"}
    ).encode()
    return _post(url, payload, "application/json", WEBHOOK_TIMEOUT)


def _post(url: str, payload: bytes, content_type: str, timeout: float) -> str:
    """POST, the answer read (bounded) and dropped; "" on success, else why not, in
    words that never quote the URL."""
    import urllib.error  # (with http.client: 14 ms of every command's start, for a job that notifies)
    import urllib.request

    request = urllib.request.Request(
        url, data=payload, method="POST", headers={"Content-Type": content_type, "User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return type(reason).__name__ if isinstance(reason, BaseException) else "cannot connect"
    return ""


# --- pings: an outside monitor (healthchecks.io's protocol) that raises the alarm when
# no job ran at all. The ping URL is a secret (its UUID is the key): shown only as
# `describe_url` shows it.
PING_START, PING_SUCCESS, PING_FAIL = "start", "", "fail"
PING_TIMEOUT = 10  # seconds per ping: a monitor that hangs must not hold the backup
PING_BODY_LIMIT = 500  # characters: the outcome line, not a log


def ping_url(url: str, event: str) -> str:
    """healthchecks.io's addresses: URL/start, URL (success), URL/fail; a query stays last."""
    if not event:
        return url
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + event))


def send_ping(url: str, event: str, body: str, report: Reporter) -> bool:
    """POST the outcome line (already redacted by the caller) to the event's address; a
    ping that cannot be delivered is a warning, never a failure of the job."""
    if not is_webhook(url):
        report.warning(f"ping to {describe_url(url)} skipped: a ping URL is an http(s):// address")
        return False
    problem = _post(
        ping_url(url, event),
        body[:PING_BODY_LIMIT].encode("utf-8", "replace"),
        "text/plain; charset=utf-8",
        PING_TIMEOUT,
    )
    if problem:
        report.warning(f"ping ({event or 'success'}) to {describe_url(url)} failed: {problem}")
        return False
    return True


def _send_apprise(url: str, notice: Notice) -> str:
    try:
        import apprise
    except ImportError:
        return (
            "this URL needs Apprise, which is not installed: pip install 'stash-backup[notify]' "
            "(or use an http(s):// webhook URL)"
        )
    with _silenced("apprise"):
        try:
            sender = apprise.Apprise()
            if not sender.add(url):
                return "Apprise does not understand this URL (see Apprise's list of services)"
            kind = apprise.NotifyType.FAILURE if notice.kind == "failure" else apprise.NotifyType.WARNING
            if not sender.notify(title=notice.title, body=notice.body, notify_type=kind):
                return "the service did not accept the message"
        except Exception as error:  # Apprise's own bug: its message may quote the URL, so the type only
            return f"Apprise failed ({type(error).__name__})"
    return ""


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    """Apprise logs the URLs it handles (with their tokens); in the plugin, stderr is
    Stash's log. Nothing of it may come out while we send."""
    logger = logging.getLogger(name)
    saved = (logger.level, logger.propagate, logger.disabled)
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate, logger.disabled = False, True
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate, logger.disabled = saved[1], saved[2]
