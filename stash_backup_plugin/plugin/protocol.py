"""Stash's raw plugin protocol: one JSON object on stdin, log lines on stderr
(SOH, a level letter, STX, the message; level `p` carries progress 0..1), and
`{"output": ..., "error": ...}` on stdout. Standard library only."""

from __future__ import annotations

import json
import sys
import time
from typing import Optional, TextIO

from ..core.reporting import Reporter

LEVELS = {"trace": "t", "debug": "d", "info": "i", "warning": "w", "error": "e", "progress": "p"}
PROGRESS_STEP = 0.005  # Stash polls progress; more lines than this only add noise
PROGRESS_INTERVAL = 1.0


def encode_log(level: str, message: str) -> str:
    """One or more protocol lines; Stash reads stderr line by line."""
    letter = LEVELS[level]
    lines = [line for line in str(message).splitlines() if line.strip()] or ["(empty)"]
    return "".join(f"\x01{letter}\x02{line}\n" for line in lines)


def read_input(stream: TextIO) -> dict:
    text = stream.read()
    if not text.strip():
        return {}
    data = json.loads(text)
    return data if isinstance(data, dict) else {}


def encode_output(output: Optional[str] = None, error: Optional[str] = None) -> str:
    return json.dumps({"output": output, "error": error})


class PluginLogReporter(Reporter):
    """Reports through Stash's log and the task queue's progress bar."""

    def __init__(self, stream: TextIO = None, redact=lambda text: text):
        self._stream = stream or sys.stderr
        self._redact = redact
        self._hidden: list[str] = []
        self._last_fraction = -1.0
        self._last_time = 0.0

    def hide(self, *secrets: str) -> None:
        """Secrets learnt after start-up (notification URLs from the settings)."""
        self._hidden.extend(s for s in secrets if s)

    def redact(self, text: str) -> str:
        for secret in self._hidden:
            text = text.replace(secret, "***")
        return self._redact(text)

    def _emit(self, level: str, message: str) -> None:
        self._stream.write(encode_log(level, self.redact(message)))
        self._stream.flush()

    def info(self, message: str) -> None:
        self._emit("info", message)

    def warning(self, message: str) -> None:
        self._emit("warning", message)

    def error(self, message: str) -> None:
        self._emit("error", message)

    def progress(self, fraction: float, label: str = "") -> None:
        now = time.monotonic()
        if (
            fraction < 1.0
            and abs(fraction - self._last_fraction) < PROGRESS_STEP
            and now - self._last_time < PROGRESS_INTERVAL
        ):
            return
        self._last_fraction, self._last_time = fraction, now
        self._emit("progress", f"{max(0.0, min(fraction, 1.0)):.4f}")
