"""stash-restore --map-path on a Stash v0.31 database of 200k files (benchmarks/
library.py: Stash's own schema, 25 files to a folder in a studio/year/title tree):
the rewrite as stash-restore does it (one transaction, then quick_check), against the
hand-written SQL users post for a move (one UPDATE ... LIKE, then quick_check, in
sqlite3); and the dry run's preview. Seconds (median of alternating runs, spread) and
our peak RSS.

With --scan-videos N: the first scan of a real Stash v0.31.1 after its library of N
small real videos moved (renamed: modification times kept; copied: new ones),
restored with --map-path against restored without it (Stash then re-links by its
own folder-move detection or by fingerprint).

    python benchmarks/pathmap.py [--files 200000] [--runs 3] [--scan-videos 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import library  # noqa: E402
from benchmarks.harness import compare, run_measured  # noqa: E402

OLD, NEW = "/data/media", "/mnt/library"
HAND_WRITTEN = (
    f"UPDATE folders SET path = '{NEW}' || substr(path, {len(OLD) + 1}) "
    f"WHERE path = '{OLD}' OR path LIKE '{OLD}/%'; PRAGMA quick_check;"
)
COUNT = (
    f"SELECT count(DISTINCT folders.id), count(files.id) FROM folders LEFT JOIN files "
    f"ON files.parent_folder_id = folders.id WHERE folders.path = '{OLD}' OR folders.path LIKE '{OLD}/%'"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scan-videos", type=int, default=0, help="also time Stash's first scan after a move")
    args = parser.parse_args()
    if args.scan_videos:
        scan_after_move(args.scan_videos)
    bench_pathmap(args.files, args.runs)
    return 0


def bench_pathmap(file_count: int, runs: int) -> None:
    """The rewrite and the dry run's preview against their hand-written SQL (run.py calls
    this too: --only pathmap)."""
    pristine = library.files_library(file_count)
    with sqlite3.connect(f"file:{pristine}?mode=ro", uri=True) as db:
        folders, files = (db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("folders", "files"))
    print(f"database {pristine} ({pristine.stat().st_size >> 20} MiB): {folders} folders, {files} files")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-pathmap-", dir=pristine.parent) as work:
        copy = Path(work) / "stash-go.sqlite"

        def fresh_copy() -> None:
            shutil.copyfile(pristine, copy)

        compare(
            "map-path rewrite + quick_check",
            f"{files // 1000}k files",
            "sqlite3 UPDATE",
            lambda: run_measured(["sqlite3", str(copy), HAND_WRITTEN]),
            lambda: run_measured(
                [sys.executable, "-m", "benchmarks.ours", "pathmap", str(copy), f"{OLD}={NEW}"], env=env
            ),
            runs,
            before_each=fresh_copy,
        )
        fresh_copy()
        with sqlite3.connect(copy) as db:
            db.executescript(HAND_WRITTEN.split(";")[0])
            expected = db.execute(
                "SELECT group_concat(path, '|') FROM (SELECT path FROM folders ORDER BY id)"
            ).fetchone()
        fresh_copy()
        run_measured([sys.executable, "-m", "benchmarks.ours", "pathmap", str(copy), f"{OLD}={NEW}"], env=env)
        with sqlite3.connect(copy) as db:
            assert (
                db.execute("SELECT group_concat(path, '|') FROM (SELECT path FROM folders ORDER BY id)").fetchone()
                == expected
            ), "the rewrite differs from the hand-written SQL's"
        fresh_copy()
        compare(
            "map-path dry-run preview",
            f"{files // 1000}k files",
            "sqlite3 count",
            lambda: run_measured(["sqlite3", str(copy), COUNT]),
            lambda: run_measured(
                [sys.executable, "-m", "benchmarks.ours", "pathmap-preview", str(copy), f"{OLD}={NEW}"], env=env
            ),
            runs,
        )


# --- Stash's first scan after the move ------------------------------------------------------


def videos(count: int) -> Path:
    """`count` small real videos (3 s, 320x240), each its own picture (a box of its own
    colour and place: Stash's oshash reads a file's first and last 64 KiB), cached."""
    folder = library.CACHE / f"pathmap-videos-v2-{count}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(count):
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=3:size=320x240:rate=25",
                "-vf",
                f"drawbox=x={index * 7 % 290}:y={index * 13 % 210}:w=30:h=30:"
                f"color=0x{index * 2654435761 % 0xFFFFFF:06x}:t=fill",
                "-pix_fmt",
                "yuv420p",
                str(folder / f"video {index:05d}.mp4"),
            ],
            check=True,
        )
    (folder / ".complete").write_text("ok")
    return folder


def scan_after_move(count: int) -> None:
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer, move_library

    binary = build(NEW_VERSION)
    source = videos(count)
    with tempfile.TemporaryDirectory(prefix="bench-pathmap-scan-") as work:
        root = Path(work)
        for how in ("renamed", "copied"):
            old, new = root / how / "media" / "a", root / how / "data" / "library"
            for index, video in enumerate(sorted(source.glob("*.mp4"))):  # ten folders
                (old / f"part {index % 10}").mkdir(parents=True, exist_ok=True)
                shutil.copy2(video, old / f"part {index % 10}" / video.name)
            server = _stash(StashServer, binary, root / how / "stash", old)
            server.scan(old)
            before = _scene_ids(server)
            backup = _backup(server, root / how / "archive")
            server.stop()
            move_library(old, new, how)
            for mapped in (True, False):
                fresh = _stash(StashServer, binary, root / how / f"stash-{mapped}", new)
                fresh.stop()
                mapping = ["--map-path", f"{old}={new}"] if mapped else []
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "stash_backup_plugin.offline",
                        str(backup),
                        "--config",
                        str(fresh.config_path),
                        "--yes",
                        *mapping,
                    ],
                    check=True,
                    capture_output=True,
                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                )
                fresh.start()
                seconds = fresh.scan(new)
                after = _scene_ids(fresh)
                print(
                    f"first scan after the move ({how}, {count} videos) {'with' if mapped else 'without'} "
                    f"--map-path: {seconds:6.2f} s; {len(after)} scenes (before {len(before)}), "
                    f"the same ids: {after == before}",
                    flush=True,
                )
                fresh.stop()


def _stash(server_class, binary: Path, root: Path, library_folder: Path):
    server = server_class(
        binary,
        root,
        "bench",
        extra_config={"stash": [{"path": str(library_folder), "excludevideo": False, "excludeimage": False}]},
    )
    return server.start()


def _scene_ids(server) -> list[int]:
    found = server.graphql("{ findScenes(filter: {per_page: -1}) { scenes { id } } }")["findScenes"]["scenes"]
    return sorted(int(scene["id"]) for scene in found)


def _backup(server, archive: Path) -> Path:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stash_backup_plugin",
            "download",
            "--url",
            server.url,
            "--dest",
            str(archive),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    return archive / json.loads(result.stdout)["file"]


if __name__ == "__main__":
    sys.exit(main())
