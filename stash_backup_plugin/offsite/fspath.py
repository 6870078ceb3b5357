"""rclone's remote strings, read as rclone reads them: a local folder, `name:path`, a
remote with options `name,option=value:path`, or a remote made on the fly
`:backend,option=value:path`. Everything that splits a remote string (where the
remote's root is, which options it carries) goes through `parse`, so that no
operation takes a remote for a local folder, or the other way round.

The rules are those of rclone's `fspath.Parse` (fs/fspath/path.go, rclone v1.71+):

- "If path has no `:` in, it must be a local path."
- A leading `:` names a backend made on the fly.
- "`:` or `,` not before a path separator must be a local path, except if the path
  started with `:` in which case it was intended to be an on the fly remote so return
  an error" (a `/` or `\\` before the first `:` or `,`: `./a:b`, `/x/y:z`).
- The name: `[\\w\\p{L}\\p{N}.+@]+(?:[ -]+[\\w\\p{L}\\p{N}.+@-]+)*` (configNameRe).
- "If we parsed a drive letter, must be a local path": a one-letter name before `:`
  is a Windows drive (`C:\\x`), on Windows only (fs/driveletter).
- Options: `param=value` or a bare `param` (= "true"), separated by `,`, the last one
  ended by `:`; a param is `[0-9A-Za-z_.]+`; a value is unquoted up to `,` or `:`, or
  quoted with `'` or `"` from its first character, a doubled quote standing for one.
- `name:` with nothing after it is the remote's root (an empty path).

Pure logic, standard library only."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..core.errors import UsageError

_CONFIG_NAME = r"[\w.+@]+(?:[ -]+[\w.+@-]+)*"  # Python's \w is Unicode: letters and digits
_REMOTE_NAME = re.compile(r"^:?" + _CONFIG_NAME + r"(?::$|,)")
_PARAM = re.compile(r"[0-9A-Za-z_.]")


@dataclass(frozen=True)
class RemotePath:
    name: str  # "" for a local path; "remote", or ":backend" for one made on the fly
    path: str  # in the remote (or the local path); may be empty
    options: tuple[tuple[str, str], ...] = field(default=())  # from the string, in order

    @property
    def is_local(self) -> bool:
        return not self.name

    @property
    def on_the_fly(self) -> bool:
        return self.name.startswith(":")

    @property
    def backend(self) -> str:
        """The backend of a remote made on the fly (`:s3` -> s3), else ""."""
        return self.name[1:] if self.on_the_fly else ""

    @property
    def root(self) -> str:
        """The remote itself, options included, without its path: `name,opt=v:`."""
        if self.is_local:
            return ""
        return self.name + "".join(f",{key}={_quoted(value)}" for key, value in self.options) + ":"

    def __str__(self) -> str:
        return self.root + self.path


def _quoted(value: str) -> str:
    if not any(c in value for c in ",:'\""):
        return value
    return '"' + value.replace('"', '""') + '"'


def _refuse(why: str) -> UsageError:
    return UsageError(
        f"rclone cannot read that remote: {why} (write REMOTE:path, name,option=value:path, "
        ":backend,option=value:path or a local folder)"
    )


def parse(spec: str, windows: bool = os.name == "nt") -> RemotePath:
    """The parts of a remote string, or UsageError saying what rclone would say.
    The message never repeats the string (it may carry secrets)."""
    if spec == "":
        raise _refuse("it is empty")
    if ":" not in spec:
        return RemotePath("", spec)
    name_end = _name_end(spec)
    if name_end < 0:
        return RemotePath("", spec)  # a local path with a `:` in a later part
    name, has_options = spec[:name_end], spec[name_end] == ","
    if windows and not has_options and len(name) == 1 and name.isascii() and name.isalpha():
        return RemotePath("", spec)  # a drive letter
    if not has_options:
        return RemotePath(name, spec[name_end + 1 :])
    pairs, end = _read_options(spec, name_end + 1)
    return RemotePath(name, spec[end + 1 :], tuple(pairs))


def _name_end(spec: str) -> int:
    """Where the remote's name ends (at its `:` or `,`), or -1 for a local path."""
    for index, char in enumerate(spec):
        if index == 0 and char == ":":
            continue
        if char in "/\\":
            if spec.startswith(":"):
                raise _refuse("the name of a remote made on the fly has a path separator in it")
            return -1
        if char in ":,":
            name = spec[:index]
            if name in ("", ":"):
                raise _refuse("config name can't be empty")
            if not _REMOTE_NAME.match(name + ":"):
                raise _refuse(
                    "config name may only contain letters, digits, `_`, `-`, `.`, `+`, `@` and space, "
                    "not start with `-` or space, and not end with space"
                )
            return index
    raise _refuse("config name needs a trailing ':'")


def _read_options(spec: str, start: int) -> tuple[list[tuple[str, str]], int]:
    """The `param=value` pairs from `start` to the `:` that ends them: (pairs, index of that `:`)."""
    pairs: list[tuple[str, str]] = []
    index = start
    while True:
        param_start = index
        while index < len(spec) and spec[index] not in ":,=":
            if not _PARAM.match(spec[index]):
                raise _refuse("config parameters may only contain `0-9`, `A-Z`, `a-z`, `_` and `.`")
            index += 1
        if index >= len(spec):
            raise _refuse("config parameter must end with `,` or `:`")
        param = spec[param_start:index]
        if not param:
            raise _refuse("config parameters can't be empty")
        if spec[index] == "=":
            value, index = _read_value(spec, index + 1)
        else:
            value = "true"
        pairs.append((param, value))
        if spec[index] == ":":
            return pairs, index
        index += 1


def _read_value(spec: str, start: int) -> tuple[str, int]:
    """A value from `start`: (the value, index of the `,` or `:` after it)."""
    if start < len(spec) and spec[start] in "'\"":
        quote, index, parts = spec[start], start + 1, []
        while True:
            close = spec.find(quote, index)
            if close < 0:
                raise _refuse("unterminated quoted config value")
            parts.append(spec[index:close])
            after = close + 1
            if after < len(spec) and spec[after] == quote:  # a doubled quote: one literal quote
                parts.append(quote)
                index = after + 1
                continue
            if after >= len(spec) or spec[after] not in ":,":
                raise _refuse("expecting `:` or `,` or another quote after a quote")
            return "".join(parts), after
    index = start
    while index < len(spec) and spec[index] not in ":,":
        index += 1
    if index >= len(spec):
        raise _refuse("unquoted config value must end with `,` or `:`")
    return spec[start:index], index
