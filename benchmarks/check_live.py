"""`stash-backup check-live` against `sqlite3 db 'PRAGMA quick_check'` on a Stash-shaped
database in WAL mode held open by a writer (as a running Stash holds it): seconds
(median of alternating runs, spread), our peak RSS; goal ratio <= 1.1x. Then the
check's effect on the writer: the latency of small commits made while it runs,
against the same commits with no check running (our reader takes no lock, so a
writer is never made to wait by it; what remains is disk and CPU contention).

    python benchmarks/check_live.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.data import stash_shaped_database  # noqa: E402
from benchmarks.harness import compare, run_measured  # noqa: E402

MiB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bench_check_live(args.size_mib * MiB, args.runs)
    return 0


def bench_check_live(size: int, runs: int):
    """run.py calls this too (--only checklive)."""
    pristine = stash_shaped_database(size)
    with tempfile.TemporaryDirectory(prefix="bench-checklive-", dir=pristine.parent) as work:
        live = Path(work) / "stash-go.sqlite"
        shutil.copyfile(pristine, live)
        writer = sqlite3.connect(live, check_same_thread=False)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("CREATE TABLE IF NOT EXISTS bench_writes (id INTEGER PRIMARY KEY, at REAL)")
        writer.commit()  # the -wal and -shm now exist, as beside a running Stash
        env = dict(os.environ, PYTHONPATH=str(REPO))
        ours = [
            sys.executable,
            "-m",
            "stash_backup_plugin",
            "check-live",
            "-q",
            "--database",
            str(live),
            "--dest",
            str(Path(work) / "archive"),
        ]
        result = compare(
            "check-live (quick_check)",
            f"{live.stat().st_size >> 20} MiB",
            "sqlite3 quick_check",
            lambda: run_measured(["sqlite3", str(live), "PRAGMA quick_check"]),
            lambda: run_measured(ours, env=env),
            runs,
        )
        _writer_latency(writer, ours, env)
        writer.close()
    return result


def _writer_latency(writer: sqlite3.Connection, ours: list, env: dict) -> None:
    idle = _commit_latencies(writer, lambda: time.sleep(3))
    during = _commit_latencies(writer, lambda: subprocess.run(ours, env=env, check=True, stdout=subprocess.DEVNULL))
    print(
        f"a writer's commit while idle:           median {statistics.median(idle) * 1000:6.2f} ms, "
        f"max {max(idle) * 1000:7.2f} ms ({len(idle)} commits)"
    )
    print(
        f"a writer's commit during check-live:    median {statistics.median(during) * 1000:6.2f} ms, "
        f"max {max(during) * 1000:7.2f} ms ({len(during)} commits)",
        flush=True,
    )


def _commit_latencies(writer: sqlite3.Connection, meanwhile) -> list[float]:
    latencies: list[float] = []
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            started = time.perf_counter()
            writer.execute("INSERT INTO bench_writes (at) VALUES (?)", (started,))
            writer.commit()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        meanwhile()
    finally:
        done.set()
        thread.join()
    return latencies


if __name__ == "__main__":
    sys.exit(main())
