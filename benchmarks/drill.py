"""The restore drill against a plain restore of the same backup: a real Stash v0.31
serving a Stash-shaped library (benchmarks/library.py) is backed up once into the
archive by our CLI; then, alternating which goes first, `stash-backup drill` (restore
into a scratch folder, boot the same v0.31.1 binary on it, compare, stop, clean up)
and `stash-restore` of the same backup into an empty database place and blobs folder.

Reported: both times (medians, spreads), the ratio, and the drill's peak scratch
disk space (measured on a run of its own, sampling the folder's blocks, so that the
sampling costs no timed run anything) against the backup's restored size and its
size in the archive, and against the space the drill checks for before it starts."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import library
from benchmarks.harness import Sample, run_measured

PY = sys.executable
MiB = 1 << 20


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def _ours(*args: str) -> list[str]:
    return [PY, "-m", "stash_backup_plugin", *args]


def _disk_bytes(folder: Path) -> int:
    """Blocks of every file and folder under `folder`; what the drill removes while we
    walk is skipped (os.walk ignores folders gone before it lists them)."""
    total = 0
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except OSError:
                continue
    return total


class ScratchSampler(threading.Thread):
    """The peak disk space of the drill's scratch folders in the archive."""

    def __init__(self, archive: Path):
        super().__init__(daemon=True)
        self.archive, self.peak, self.done = archive, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            used = sum(_disk_bytes(folder) for folder in self.archive.glob(".drill*"))
            self.peak = max(self.peak, used)
            time.sleep(0.1)


def bench_drill(database_bytes: int, blob_count: int, runs: int, work: Path) -> list[str]:
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    binary = build(NEW_VERSION)
    lib = library.working_copy(library.library(database_bytes, blob_count), work / "drill-stash")
    server = StashServer(binary, lib.root, NEW_VERSION)
    archive = work / "drill-archive"
    server.start()
    try:
        made = subprocess.run(
            _ours("download", "--url", server.url, "--dest", str(archive), "--json"),
            env=_env(),
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        server.stop()
    name = json.loads(made.stdout)["file"]
    drill_command = _ours("drill", name, "--dest", str(archive), "--stash-binary", str(binary), "-q")
    place = work / "drill-restore-place"
    samples: dict[str, list[Sample]] = {"drill": [], "restore": []}
    for trial in range(runs):
        order = [
            ("drill", lambda: run_measured(drill_command, env=_env())),
            ("restore", lambda: _plain_restore(name, archive, place)),
        ]
        for which, action in order if trial % 2 == 0 else order[::-1]:
            samples[which].append(action())
    peak = _peak_scratch(drill_command, archive)
    shutil.rmtree(place, ignore_errors=True)
    return _report(samples, peak, _backup_sizes(archive, name), lib, runs)


def _plain_restore(name: str, archive: Path, place: Path) -> Sample:
    shutil.rmtree(place, ignore_errors=True)
    (place / "blobs").mkdir(parents=True)
    config = place / "config.yml"
    config.write_text(
        f"database: {place / 'stash-go.sqlite'}\nblobs_path: {place / 'blobs'}\nblobs_storage: FILESYSTEM\nport: 1\n"
    )
    return run_measured(
        [PY, "-m", "stash_backup_plugin.offline", name, "--config", str(config), "--archive", str(archive), "--yes"],
        env=_env(),
    )


def _peak_scratch(drill_command: list[str], archive: Path) -> int:
    sampler = ScratchSampler(archive)
    sampler.start()
    try:
        run_measured(drill_command, env=_env())
    finally:
        sampler.done.set()
        sampler.join()
    return sampler.peak


def _backup_sizes(archive: Path, name: str) -> dict:
    """The backup restored (database + blobs), and as the archive keeps it (its
    compressed snapshot + its blobs, which later backups share)."""
    from stash_backup_plugin.core.store import Store
    from stash_backup_plugin.jobs.drill import needed_space

    header = Store(archive).header(name)
    return {
        "restored": header.snapshot.size + header.blob_bytes,
        "archived": header.snapshot.stored_size + header.blob_bytes,
        "checked": needed_space(header.snapshot.size, header.blob_bytes),
    }


def _report(samples: dict, peak: int, sizes: dict, lib: library.Library, runs: int) -> list[str]:
    drill, restore = (statistics.median(s.seconds for s in samples[k]) for k in ("drill", "restore"))
    spread = {k: f"{min(s.seconds for s in v):.2f}-{max(s.seconds for s in v):.2f}" for k, v in samples.items()}
    lines = [
        f"restore drill: {lib.database.stat().st_size // MiB} MiB database, {lib.blob_count()} blobs, "
        f"{runs} runs each (alternating)",
        f"  drill {drill:.2f}s ({spread['drill']}) vs stash-restore of the same backup into an empty place "
        f"{restore:.2f}s ({spread['restore']}): {drill / restore:.2f}x; drill peak RSS "
        f"{max(s.max_rss for s in samples['drill']) / MiB:.1f} MiB (the largest process: the drill or its Stash)",
        f"  peak scratch disk space {peak / MiB:.0f} MiB: {peak / sizes['restored']:.2f}x the backup restored "
        f"({sizes['restored'] / MiB:.0f} MiB), {peak / sizes['archived']:.2f}x its size in the archive "
        f"({sizes['archived'] / MiB:.0f} MiB); the drill's space check asks for {sizes['checked'] / MiB:.0f} MiB",
    ]
    for line in lines:
        print(line, flush=True)
    return lines
