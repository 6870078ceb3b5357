"""Garbage collection and migration plans: pure decisions, case by case."""

from dataclasses import dataclass

import pytest

from stash_backup_plugin.core.store_plan import OldBackup, plan_gc, plan_migration, plan_snapshots, stored_name_for


@dataclass
class Blob:
    checksum: str
    size: int
    mtime: float = 100.0


def c(n: int) -> str:
    return f"{n:032x}"


def stored(*items):
    return [Blob(c(n), size, mtime) for n, size, mtime in items]


# (stored (n, size, mtime), referenced n's (merged, repeats), protect_since) -> deleted n's, spared, kept
GC_CASES = {
    "nothing stored": ([], [1, 2], None, [], 0, 0),
    "all referenced": ([(1, 10, 0), (2, 20, 0)], [1, 1, 2, 2], None, [], 0, 2),
    "unreferenced go": ([(1, 10, 0), (2, 20, 0), (3, 30, 0)], [2], None, [1, 3], 0, 1),
    "no record at all: everything goes": ([(1, 10, 0), (2, 20, 0)], [], None, [1, 2], 0, 0),
    "referenced but missing is not deleted and not counted": ([(3, 30, 0)], [1, 2, 3], None, [], 0, 1),
    "a pending run's new blobs are spared": ([(1, 10, 50), (2, 20, 150), (3, 30, 200)], [], 100.0, [1], 2, 0),
    "protection never spares what is referenced anyway": ([(1, 10, 150)], [1], 100.0, [], 0, 1),
    "interleaved": ([(1, 1, 0), (3, 3, 0), (5, 5, 0), (7, 7, 0)], [2, 3, 3, 6, 7], None, [1, 5], 0, 2),
}


@pytest.mark.parametrize("case", sorted(GC_CASES))
def test_gc_plan(case):
    items, referenced, protect, deleted, spared, kept = GC_CASES[case]
    plan = plan_gc(stored(*items), [c(n) for n in referenced], protect)
    assert [checksum for checksum, _ in plan.delete_blobs] == [c(n) for n in deleted]
    assert plan.spared_blobs == spared and plan.kept_blobs == kept
    sizes = {c(n): size for n, size, _ in items}
    assert plan.blob_bytes == sum(sizes[c(n)] for n in deleted)


def test_gc_plan_reads_the_references_to_the_end():
    """A damaged record raises at its end: the plan must not finish without it."""

    def references():
        yield c(1)
        raise RuntimeError("damaged record")

    with pytest.raises(RuntimeError):
        plan_gc(stored((5, 1, 0)), references())


def test_gc_plan_is_streaming():
    """Stored blobs and references are consumed as streams (generators), once."""
    blobs = (Blob(c(n), 1, 0) for n in range(100000))
    references = (c(n) for n in range(0, 100000, 2))
    plan = plan_gc(blobs, references)
    assert plan.kept_blobs == 50000 and len(plan.delete_blobs) == 50000


def test_snapshot_plan():
    snapshots = [("a", 0, 10), ("b", 0, 20), ("c", 500, 30), ("d", 0, 40)]
    plan = plan_snapshots(snapshots, recorded=["a"], pending=["d"], protect_since=400)
    assert plan.delete_snapshots == ["b"] and plan.spared_snapshots == ["c", "d"] and plan.snapshot_bytes == 20


def old(file, ok=True, verified_at="2026-01-01", error=""):
    return OldBackup(file, 100, ok, verified_at, error)


def test_migration_plan():
    backups = [
        old("stash-go.sqlite.85.20261101_030000.zip"),
        old("stash-go.sqlite.85.20261102_030000.zip", ok=False, error="bad CRC"),
        old("stash-go.sqlite.85.20261103_030000"),
        old("stash-go.sqlite.85.20261104_030000.zip"),
        old("stash-go.sqlite.85.20261105_030000.zip", ok=False, verified_at=""),
    ]
    steps = plan_migration(
        backups,
        imported_from={"stash-go.sqlite.85.20261104_030000.zip": "stash-go.sqlite.85.20261104_030000"},
        record_names=["stash-go.sqlite.85.20261104_030000", "stash-go.sqlite.85.20261101_030000"],
    )
    summary = [(s.old.file, s.action, s.record_name) for s in steps]
    assert summary == [
        # a record of that name exists (a new-format backup made in the same second): a free name
        ("stash-go.sqlite.85.20261101_030000.zip", "import", "stash-go.sqlite.85.20261101_030000-2"),
        ("stash-go.sqlite.85.20261102_030000.zip", "skip", ""),
        ("stash-go.sqlite.85.20261103_030000", "import", "stash-go.sqlite.85.20261103_030000"),
        ("stash-go.sqlite.85.20261104_030000.zip", "remove-old", "stash-go.sqlite.85.20261104_030000"),
        ("stash-go.sqlite.85.20261105_030000.zip", "skip", ""),
    ]
    assert "bad CRC" in steps[1].reason and "never verified" in steps[4].reason


def test_stored_name_for():
    assert stored_name_for("stash-go.sqlite.85.20261101_030000.zip") == "stash-go.sqlite.85.20261101_030000"
    assert stored_name_for("stash-go.sqlite.85.20261101_030000") == "stash-go.sqlite.85.20261101_030000"
