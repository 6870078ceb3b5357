"""CLI output: messages on stderr and, on a terminal, a one-line progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from .errors import StashBackupError, StorageError
from .memory import beside_stash
from .reporting import Reporter

BAR_WIDTH = 30


class TerminalReporter(Reporter):
    def __init__(self, stream: Optional[TextIO] = None, quiet: bool = False, redact=lambda text: text):
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._redact = redact
        self._bar = self._stream.isatty() and not quiet
        self._bar_shown = False
        self._last = 0.0

    def redact(self, text: str) -> str:
        return self._redact(text)

    def _line(self, text: str) -> None:
        if self._bar_shown:
            self._stream.write("\r\x1b[K")
            self._bar_shown = False
        self._stream.write(self._redact(text) + "\n")
        self._stream.flush()

    def info(self, message: str) -> None:
        if not self._quiet:
            self._line(message)

    def warning(self, message: str) -> None:
        self._line(f"warning: {message}")

    def error(self, message: str) -> None:
        self._line(f"error: {message}")

    def progress(self, fraction: float, label: str = "") -> None:
        if not self._bar:
            return
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < 0.1:
            return
        self._last = now
        filled = int(BAR_WIDTH * max(0.0, min(fraction, 1.0)))
        self._stream.write(f"\r[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}% {label}\x1b[K")
        self._stream.flush()
        self._bar_shown = True

    def finish(self) -> None:
        if self._bar_shown:
            self._stream.write("\r\x1b[K")
            self._bar_shown = False


def run_command(
    report: TerminalReporter,
    action: Callable[[], int],
    redact=lambda text: text,
    interrupted: str = "interrupted; nothing partial was kept",
    tune_memory: Optional[Callable[[], bool]] = None,
) -> int:
    """The CLIs' edge: typed errors become one line on stderr and an exit code, and so
    does what no layer below foresaw (a full disk, an unreadable file, SQLite refusing):
    never a traceback. `tune_memory` (core/memory.py): by default a small peak, for
    commands that run beside Stash."""
    (tune_memory or beside_stash)()
    try:
        return action()
    except StashBackupError as error:
        report.error(redact(str(error)))
        return error.exit_code
    except OSError as error:
        unforeseen = _storage_error(error)
        report.error(redact(str(unforeseen)))
        return unforeseen.exit_code
    except Exception as error:
        # sqlite3 is looked up, not imported: a command that never opened a database
        # cannot have raised its errors, and --help stays free of the import.
        sqlite3 = sys.modules.get("sqlite3")
        if sqlite3 is None or not isinstance(error, sqlite3.Error):
            raise
        report.error(redact(f"SQLite: {' '.join(str(error).split())}"))
        return StorageError.exit_code
    except KeyboardInterrupt:
        report.error(interrupted)
        return 130
    finally:
        report.finish()


def _storage_error(error: OSError) -> StorageError:
    from .atomic import storage_error

    if error.filename:
        return storage_error("use", Path(error.filename), error)
    return StorageError(error.strerror or str(error))
