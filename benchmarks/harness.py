"""Side-by-side timing: each trial runs the reference tool and ours one after the
other, alternating which goes first, in separate processes; per-process peak RSS
comes from wait4. Medians and spreads, never a single run."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence


@dataclass
class Sample:
    seconds: float
    max_rss: int  # bytes


TIME = "/usr/bin/time"


def run_measured(command: Sequence[str], cwd: Optional[str] = None, env: Optional[dict] = None) -> Sample:
    """Wall time, and the peak RSS as GNU time reports it: Linux carries a process's
    RSS high-water mark across fork and exec, so wait4 on a child of this (large)
    Python process would report our own size; time's children start small."""
    report = tempfile.NamedTemporaryFile(prefix="bench-rss-", delete=False)
    report.close()
    started = time.perf_counter()
    result = subprocess.run(
        [TIME, "-f", "%M", "-o", report.name, *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    text = open(report.name).read().strip().splitlines()
    os.unlink(report.name)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode()[-800:]}")
    return Sample(elapsed, int(text[-1]) * 1024)


def cold_cache() -> None:
    """Start a side with the page cache dropped (as root): a night's run reads images
    and a database nobody read for a day, and a restore an archive nobody touched; the
    side that ran second would otherwise read what the first left in memory."""
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        pass


@dataclass
class Comparison:
    name: str
    size_label: str
    reference: list[Sample] = field(default_factory=list)
    ours: list[Sample] = field(default_factory=list)
    payload_bytes: Optional[int] = None
    reference_name: str = ""

    @staticmethod
    def _median(samples):
        return statistics.median(s.seconds for s in samples)

    @property
    def ratio(self) -> float:
        """ours / reference in time (lower is better)."""
        return self._median(self.ours) / self._median(self.reference)

    def row(self) -> str:
        ref, ours = self._median(self.reference), self._median(self.ours)
        spread = lambda xs: f"{min(s.seconds for s in xs):.2f}–{max(s.seconds for s in xs):.2f}"  # noqa: E731
        rss = max(s.max_rss for s in self.ours) / 2**20
        speed = ""
        if self.payload_bytes:
            speed = f"{self.payload_bytes / ours / 2**20:8.0f} / {self.payload_bytes / ref / 2**20:8.0f} MiB/s"
        return (
            f"{self.name:<34} {self.size_label:>9}  ours {ours:7.2f}s ({spread(self.ours)})  "
            f"{self.reference_name or 'ref'} {ref:7.2f}s ({spread(self.reference)})  "
            f"ratio {self.ratio:5.2f}x  peak RSS {rss:6.1f} MiB  {speed}"
        )


def compare(
    name: str,
    size_label: str,
    reference_name: str,
    reference: Callable[[], Sample],
    ours: Callable[[], Sample],
    runs: int,
    before_each: Optional[Callable[[], None]] = None,
    payload_bytes: Optional[int] = None,
) -> Comparison:
    result = Comparison(name, size_label, payload_bytes=payload_bytes, reference_name=reference_name)
    for trial in range(runs):
        order = [("reference", reference), ("ours", ours)]
        if trial % 2:
            order.reverse()
        for which, action in order:
            if before_each:
                before_each()
            getattr(result, which).append(action())
    print(result.row(), flush=True)
    return result
