"""How a job tells the user what is happening. The plugin reports through Stash's
log protocol, the CLI through stderr and a terminal progress bar; jobs only see this
narrow interface."""

from __future__ import annotations

from typing import Optional


class Reporter:
    """Quiet by default; subclasses show messages and progress."""

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass

    def progress(self, fraction: float, label: str = "") -> None:
        pass

    def redact(self, text: str) -> str:
        """`text` as this reporter would show it (secrets hidden): for messages that
        are kept elsewhere, such as the status file or a notification."""
        return text

    def phase(self, start: float, end: float) -> "Reporter":
        """A reporter whose progress 0..1 maps onto start..end of this one."""
        return _Phase(self, start, end)

    def bytes_progress(self, label: str):
        """A callback (done, total) that reports a fraction when the total is known."""

        def callback(done: int, total: Optional[int], *_):
            if total:
                self.progress(min(done / total, 1.0), label)

        return callback


class _Phase(Reporter):
    def __init__(self, parent: Reporter, start: float, end: float):
        self._parent, self._start, self._end = parent, start, end

    def info(self, message: str) -> None:
        self._parent.info(message)

    def warning(self, message: str) -> None:
        self._parent.warning(message)

    def error(self, message: str) -> None:
        self._parent.error(message)

    def progress(self, fraction: float, label: str = "") -> None:
        self._parent.progress(self._start + (self._end - self._start) * max(0.0, min(fraction, 1.0)), label)


def human_size(size: Optional[float]) -> str:
    if size is None:
        return "unknown size"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
