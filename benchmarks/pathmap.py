"""stash-restore --map-path on a Stash v0.31 database of 200k files (benchmarks/
library.py: Stash's own schema, 25 files to a folder in a studio/year/title tree):
the rewrite as stash-restore does it (one transaction, then quick_check), against the
hand-written SQL users post for a move (one UPDATE ... LIKE, then quick_check, in
sqlite3); and the dry run's preview. Seconds (median of alternating runs, spread) and
our peak RSS.

    python benchmarks/pathmap.py [--files 200000] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import library  # noqa: E402
from benchmarks.harness import compare, run_measured  # noqa: E402

OLD, NEW = "/data/media", "/mnt/library"
HAND_WRITTEN = (f"UPDATE folders SET path = '{NEW}' || substr(path, {len(OLD) + 1}) "
                f"WHERE path = '{OLD}' OR path LIKE '{OLD}/%'; PRAGMA quick_check;")
COUNT = (f"SELECT count(DISTINCT folders.id), count(files.id) FROM folders LEFT JOIN files "
         f"ON files.parent_folder_id = folders.id WHERE folders.path = '{OLD}' OR folders.path LIKE '{OLD}/%'")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pristine = library.files_library(args.files)
    with sqlite3.connect(f"file:{pristine}?mode=ro", uri=True) as db:
        folders, files = (db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("folders", "files"))
    print(f"database {pristine} ({pristine.stat().st_size >> 20} MiB): {folders} folders, {files} files")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-pathmap-", dir=pristine.parent) as work:
        copy = Path(work) / "stash-go.sqlite"

        def fresh_copy() -> None:
            shutil.copyfile(pristine, copy)

        compare("map-path rewrite + quick_check", f"{files // 1000}k files", "sqlite3 UPDATE",
                lambda: run_measured(["sqlite3", str(copy), HAND_WRITTEN]),
                lambda: run_measured([sys.executable, "-m", "benchmarks.ours", "pathmap", str(copy), f"{OLD}={NEW}"],
                                     env=env),
                args.runs, before_each=fresh_copy)
        fresh_copy()
        with sqlite3.connect(copy) as db:
            db.executescript(HAND_WRITTEN.split(";")[0])
            expected = db.execute("SELECT group_concat(path, '|') FROM (SELECT path FROM folders ORDER BY id)").fetchone()
        fresh_copy()
        run_measured([sys.executable, "-m", "benchmarks.ours", "pathmap", str(copy), f"{OLD}={NEW}"], env=env)
        with sqlite3.connect(copy) as db:
            assert db.execute("SELECT group_concat(path, '|') FROM (SELECT path FROM folders ORDER BY id)").fetchone() \
                == expected, "the rewrite differs from the hand-written SQL's"
        fresh_copy()
        compare("map-path dry-run preview", f"{files // 1000}k files", "sqlite3 count",
                lambda: run_measured(["sqlite3", str(copy), COUNT]),
                lambda: run_measured([sys.executable, "-m", "benchmarks.ours", "pathmap-preview", str(copy),
                                      f"{OLD}={NEW}"], env=env),
                args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
