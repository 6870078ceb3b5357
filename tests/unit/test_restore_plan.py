"""Plan building is pure: every refusal and note from facts alone."""

from pathlib import Path

from stash_backup_plugin.offline.plan import RestoreFacts, build_plan


def facts(**changes):
    base = dict(
        backup=Path("/b/stash-go.sqlite.75.20260101_000000.zip"),
        backup_kind="zip",
        backup_schema=75,
        database_bytes=1000,
        database=Path("/s/stash-go.sqlite"),
        current_files=["", "-wal", "-shm"],
        current_schema=75,
        aside_folder=Path("/s/stash-restore-x"),
        blobs_path=Path("/s/blobs"),
        blobs_storage="FILESYSTEM",
        blobs_in_backup=10,
        blobs_to_write=4,
        blob_bytes_to_write=400,
        blobs_already_present=6,
        free_database_disk=10**9,
        free_blobs_disk=10**9,
    )
    base.update(changes)
    return RestoreFacts(**base)


def test_normal_plan_folds_the_wal_then_keeps_the_database_aside():
    plan = build_plan(facts())
    assert plan.refusal is None
    fold = [i for i, step in enumerate(plan.steps) if "fold the current stash-go.sqlite-wal" in step]
    keep = [i for i, step in enumerate(plan.steps) if "keep the current stash-go.sqlite in" in step]
    assert fold and keep and fold[0] < keep[0]
    assert any("extract 4 blob(s)" in step and "keep 6" in step for step in plan.steps)


def test_newer_schema_refused_unless_allowed():
    assert "newer" in build_plan(facts(backup_schema=80)).refusal
    assert build_plan(facts(backup_schema=80, allow_newer_schema=True)).refusal is None


def test_older_schema_notes_migration():
    assert any("migrate" in note for note in build_plan(facts(backup_schema=70)).notes)


def test_space_refusals_count_both_disks_when_they_are_one():
    assert "not enough free space" in build_plan(facts(free_database_disk=500)).refusal
    assert "not enough free space" in build_plan(facts(free_database_disk=1200, same_disk=True)).refusal
    assert build_plan(facts(free_database_disk=1200, same_disk=False)).refusal is None
    assert "blobs" in build_plan(facts(free_blobs_disk=100)).refusal


def test_blobs_without_a_blobs_folder_are_refused():
    assert "--blobs-path" in build_plan(facts(blobs_path=None)).refusal


def test_database_storage_with_file_blobs_is_noted():
    assert any("blobs_storage: DATABASE" in n for n in build_plan(facts(blobs_storage="DATABASE")).notes)


def test_fresh_install_has_nothing_to_move():
    plan = build_plan(facts(current_files=[], current_schema=None))
    assert not any("keep the current" in step or "fold the current" in step for step in plan.steps)
