"""Secrets a remote may carry, and their removal from every line we show or store.

A remote's credentials reach rclone three ways: its config file (S3 keys stay in
plain text there; passwords are only obscured, which anyone can reverse), environment
variables (`RCLONE_CONFIG_<REMOTE>_<OPTION>`, `AWS_SECRET_ACCESS_KEY`, ...), and the
remote's name itself (a connection string `:s3,secret_access_key=...:bucket`, a URL
with `user:password@`). Each value is collected and replaced by `***` wherever it
appears; the shapes are also removed by pattern, so an unknown value in a known shape
is hidden too. Pure logic, standard library only."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

MASK = "***"
# Option names whose values are secrets (rclone's, AWS's, the usual ones).
_SECRET_NAME = re.compile(
    r"(pass|secret|token|key|credential|session|auth|cookie|signature|sas|private)", re.IGNORECASE
)
# Names that contain such a word but hold no secret, and are useful to show.
_NOT_SECRET = re.compile(r"(key_file|key_use_agent|pubkey|key_exchange|known_hosts|_file$|^type$)", re.IGNORECASE)
_ENV_PREFIXES = ("RCLONE_", "AWS_", "B2_", "AZURE_", "GOOGLE_", "SWIFT_", "OS_")
_MIN_LENGTH = 4  # shorter values would mask ordinary words

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.IGNORECASE
)
_CONNECTION_PARAM = re.compile(r"(?P<name>[a-z_][a-z0-9_]*)=(?P<value>'[^']*'|\"[^\"]*\"|[^,:\s]*)", re.IGNORECASE)


def is_secret_option(name: str) -> bool:
    """Does an rclone option (or environment variable) of this name hold a secret?"""
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.search(name)


def secrets_in_environment(environ: Mapping[str, str]) -> list[str]:
    """Values of environment variables that configure a remote's credentials."""
    return [
        value
        for name, value in environ.items()
        if name.startswith(_ENV_PREFIXES) and is_secret_option(name) and len(value) >= _MIN_LENGTH
    ]


def secrets_in_config(sections: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Secret values of `rclone config dump` (every remote: a crypt remote wraps another)."""
    found = []
    for options in sections.values():
        if not isinstance(options, Mapping):
            continue
        for name, value in options.items():
            if isinstance(value, str) and is_secret_option(name) and len(value) >= _MIN_LENGTH:
                found.append(value)
    return found


def secrets_in_remote(spec: str) -> list[str]:
    """Secret values written into a remote's name: connection-string parameters and
    URL passwords."""
    found = []
    for match in _CONNECTION_PARAM.finditer(spec):
        value = match.group("value").strip("'\"")
        if is_secret_option(match.group("name")) and len(value) >= _MIN_LENGTH:
            found.append(value)
    found += [m.group("password") for m in _URL_CREDENTIALS.finditer(spec) if len(m.group("password")) >= _MIN_LENGTH]
    return found


class Redactor:
    """Replaces every known secret, and every secret-shaped part, by ***."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets)
        for secret in secrets:
            if secret and len(secret) >= _MIN_LENGTH and secret not in known:
                known.add(secret)
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)  # a secret that contains another goes first

    @property
    def secrets(self) -> list[str]:
        return list(self._secrets)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
        return _CONNECTION_PARAM.sub(_mask_param, text)


def _mask_param(match: re.Match) -> str:
    if is_secret_option(match.group("name")) and match.group("value") not in ("", MASK):
        return f"{match.group('name')}={MASK}"
    return match.group(0)
