"""stash-restore --map-path: the pure rewrite (a table of cases), the preview the dry
run shows, the SQL on Stash's own folders/files tables, and the restore around it."""

import signal
import sqlite3
from pathlib import Path

import pytest

from stash_backup_plugin.core.errors import RestoreRefused, UsageError
from stash_backup_plugin.core.faults import CRASH_ENV
from stash_backup_plugin.core.sqlite_check import check_database
from stash_backup_plugin.offline.pathmap import (
    SHOWN_UNCOVERED,
    map_library_setting,
    map_path,
    outside_library,
    parse_mappings,
    preview,
)
from stash_backup_plugin.offline.pathmap_db import preview_database, rewrite_database

from tests.support.harness import run_restore
from tests.support.restore_fixtures import make_install
from tests.support.stashlike import add_library, folder_paths, make_database, vacuum_copy


@pytest.mark.parametrize(
    "mappings,path,expected",
    [
        (["/media/a=/data/library"], "/media/a", "/data/library"),
        (["/media/a=/data/library"], "/media/a/x/y", "/data/library/x/y"),
        (["/media/a=/data/library"], "/media/ab", None),  # only at a component boundary
        (["/media/a=/data/library"], "/media", None),
        (["/media/a/=/data/library/"], "/media/a/x", "/data/library/x"),  # trailing separators are no part of it
        (["/media//a=/data/library"], "/media/a/x", "/data/library/x"),
        (["/media=/m", "/media/a=/data/library"], "/media/a/x", "/data/library/x"),  # the longest OLD wins
        (["/media/a=/data/library", "/media=/m"], "/media/b/x", "/m/b/x"),  # whatever the order given
        (["/=/mnt/old"], "/media/a", "/mnt/old/media/a"),
        (["/media=/"], "/media/a", "/a"),
        ([r"C:\Media\a=/data/a"], r"C:\Media\a\sub\x", "/data/a/sub/x"),  # every separator changes
        ([r"C:\Media\a=/data/a"], r"c:\media\A\sub", "/data/a/sub"),  # Windows compares without case
        ([r"C:\Media\a=/data/a"], r"C:\Media\ab", None),
        (["C:/Media/a=/data/a"], r"C:\Media\a\x", "/data/a/x"),  # OLD with forward slashes
        ([r"C:\=/data/c"], r"C:\Media\x", "/data/c/Media/x"),
        ([r"\\nas\share\videos=/srv/videos"], r"\\nas\share\videos\x", "/srv/videos/x"),
        ([r"/data/a=D:\Media\a"], "/data/a/sub/x.zip/in", r"D:\Media\a\sub\x.zip\in"),  # and back; zip folders too
        (["/media/a=/data/a=b"], "/media/a/x", "/data/a=b/x"),  # NEW may hold '='
        (["/media/A=/data/a"], "/media/a/x", None),  # POSIX keeps case
    ],
)
def test_rewrite(mappings, path, expected):
    assert map_path(path, parse_mappings(mappings)) == expected


@pytest.mark.parametrize(
    "texts,message",
    [
        (["/media/a"], "OLD=NEW"),
        (["media/a=/data"], "absolute"),
        (["/media/a=data"], "absolute"),
        (["=/data"], "OLD=NEW"),
        (["/media/a=/x", "/media/a/=/y"], "same folder"),
        ([r"C:\Media=/x", r"c:\media=/y"], "same folder"),
    ],
)
def test_malformed_mappings_are_refused(texts, message):
    with pytest.raises(UsageError, match=message):
        parse_mappings(texts)


def test_a_posix_name_with_a_backslash_cannot_go_to_windows():
    with pytest.raises(UsageError, match="cannot be a name on Windows"):
        map_path("/media/a/odd\\name", parse_mappings([r"/media/a=D:\a"]))


def test_preview_counts_per_mapping_and_lists_uncovered_trees_bounded():
    folders = [("/media/a", 2), ("/media/a/x", 3), ("/media/ab", 1), ("/media/b", 4)]
    folders += [(f"/other/{n}", 1) for n in range(SHOWN_UNCOVERED + 5)] + [("/other/0/deep", 7)]
    result = preview(folders, parse_mappings(["/media/a=/data/library", "/media/b=/data/b"]))
    assert [(c.mapping.old, c.folders, c.files) for c in result.counts] == [("/media/a", 2, 5), ("/media/b", 1, 4)]
    assert result.uncovered_folders == 1 + SHOWN_UNCOVERED + 5 + 1
    assert result.uncovered_files == 1 + SHOWN_UNCOVERED + 5 + 7
    assert len(result.uncovered_shown) == SHOWN_UNCOVERED and "/media/ab" in result.uncovered_shown
    assert "/other/0/deep" not in result.uncovered_shown  # inside /other/0, which is listed
    assert result.refusal is None


def test_preview_refuses_a_mapping_that_matches_nothing_and_a_clash():
    assert "matches no folder" in preview([("/media/a", 1)], parse_mappings(["/media/a=/d", "/medai/b=/e"])).refusal
    clash = preview([("/media/a", 1), ("/data/library", 1)], parse_mappings(["/media/a=/data/library"]))
    assert "would both become '/data/library'" in clash.refusal
    swapped = preview([("/a", 1), ("/b", 1)], parse_mappings(["/a=/b", "/b=/a"]))
    assert swapped.refusal is None


def test_restored_config_library_setting_and_the_targets_library_folders():
    mappings = parse_mappings([r"C:\Media=/data/media"])
    setting = [{"path": r"C:\Media\a", "excludevideo": False}, {"path": "/elsewhere"}, "junk"]
    assert map_library_setting(setting, mappings) == [
        {"path": "/data/media/a", "excludevideo": False},
        {"path": "/elsewhere"},
        "junk",
    ]
    assert outside_library(parse_mappings(["/media/a=/data/library/a"]), ["/data/library/"]) == []
    assert outside_library(parse_mappings(["/media/a=/data/libraryx"]), ["/data/library"]) == ["/data/libraryx"]


# --- the SQL, on Stash's own tables ------------------------------------------------------

LIBRARY = {"/media/a": 2, "/media/a/x": 3, "/media/a/x/y.zip": 1, "/media/ab": 1, "/media/b": 4}


def library_database(folder: Path, library: dict, separator: str = "/") -> Path:
    database = folder / "stash-go.sqlite"
    make_database(database, wal=False)
    add_library(database, library, separator)
    return database


def test_rewrite_moves_folders_and_the_roots_basename_in_one_transaction(tmp_path):
    database = library_database(tmp_path, LIBRARY)
    moved = rewrite_database(database, parse_mappings(["/media/a=/data/library", "/media/b=/data/b"]))
    assert moved == 4
    assert folder_paths(database) == {
        "/data/library": "library",
        "/data/library/x": "x",
        "/data/library/x/y.zip": "y.zip",
        "/media/ab": "ab",
        "/data/b": "b",
    }
    check_database(database, "full", blob_references=False)
    assert not list(tmp_path.glob("*-journal")) and not list(tmp_path.glob("*-wal"))


def test_two_folders_swapping_paths_pass_the_unique_index(tmp_path):
    database = library_database(tmp_path, {"/a": 1, "/b": 2})
    rewrite_database(database, parse_mappings(["/a=/b", "/b=/a"]))
    connection = sqlite3.connect(database)
    files = dict(
        connection.execute(
            "SELECT folders.path, count(*) FROM files JOIN folders "
            "ON files.parent_folder_id = folders.id GROUP BY folders.path"
        )
    )
    connection.close()
    assert files == {"/a": 2, "/b": 1}


def test_a_clash_rolls_the_whole_rewrite_back(tmp_path):
    database = library_database(tmp_path, {"/media/a": 1, "/data/library": 1})
    before = database.read_bytes()
    with pytest.raises(RestoreRefused, match="clash"):
        rewrite_database(database, parse_mappings(["/media/a=/data/library"]))
    assert database.read_bytes() == before


def test_windows_library_to_posix(tmp_path):
    database = library_database(tmp_path, {r"C:\Media\a": 1, r"C:\Media\a\sub dir": 2}, "\\")
    rewrite_database(database, parse_mappings([r"C:\Media\a=/data/a"]))
    assert folder_paths(database) == {"/data/a": "a", "/data/a/sub dir": "sub dir"}


# --- stash-restore --map-path ---------------------------------------------------------------


@pytest.fixture
def moved_install(tmp_path):
    """An install whose backups hold a library under /media/a (and one folder elsewhere)."""
    install = make_install(tmp_path / "stash")
    library = tmp_path / "library"
    library.mkdir()
    backup = install.root / "backups" / "stash-go.sqlite.75.20261127_010000"
    vacuum_copy(install.backup_plain, backup)
    add_library(backup, {**LIBRARY, "/srv/other": 2})
    return install, backup, library


def test_dry_run_shows_counts_existence_and_uncovered_and_changes_nothing(moved_install):
    install, backup, library = moved_install
    before = install.database.read_bytes()
    result = run_restore(
        str(backup),
        "--config",
        str(install.config),
        "--dry-run",
        "--map-path",
        f"/media/a={library}",
        "--map-path",
        "/media/b=/nowhere/b",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert f"/media/a -> {library}: 3 folder(s), 6 file(s) ({library} exists here)" in out
    assert "/media/b -> /nowhere/b: 1 folder(s), 4 file(s) (/nowhere/b does NOT exist here)" in out
    assert "2 folder(s) with 3 file(s) are under no --map-path" in out and "/media/ab, /srv/other" in out
    assert install.database.read_bytes() == before


def test_restore_rewrites_the_temp_copy_and_undo_puts_the_old_database_back(moved_install):
    install, backup, library = moved_install
    result = run_restore(str(backup), "--config", str(install.config), "--yes", "--map-path", f"/media/a={library}")
    assert result.returncode == 0, result.stderr
    paths = folder_paths(install.database)
    assert str(library / "x" / "y.zip") in paths and "/media/ab" in paths and "/media/a" not in paths
    assert folder_paths(backup)["/media/a"] == "a"  # the backup itself is never written
    undone = run_restore("--undo", "--config", str(install.config), "--yes")
    assert undone.returncode == 0, undone.stderr
    assert "added-after-backup" in install.names()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--map-path", "/media/q=/data"], "matches no folder"),
        (["--map-path", "/media/a=/media/b"], "would both become"),
        (["--map-path", "media/a"], "OLD=NEW"),
    ],
)
def test_a_bad_mapping_is_one_line_and_changes_nothing(moved_install, args, message):
    install, backup, _ = moved_install
    before = sorted(p.name for p in install.root.iterdir()), install.database.read_bytes()
    result = run_restore(str(backup), "--config", str(install.config), "--yes", *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert (sorted(p.name for p in install.root.iterdir()), install.database.read_bytes()) == before


def test_preview_reads_a_database_without_touching_it(tmp_path):
    database = library_database(tmp_path, LIBRARY)
    before = database.read_bytes()
    result = preview_database(database, parse_mappings(["/media/a=/d"]))
    assert result.counts[0].folders == 3 and database.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stash-go.sqlite"]


def test_map_path_is_refused_beside_undo(moved_install):
    install, _, _ = moved_install
    result = run_restore("--undo", "--config", str(install.config), "--yes", "--map-path", "/a=/b")
    assert result.returncode != 0 and "not with --undo" in result.stderr


@pytest.mark.parametrize("step", ["paths-parked", "paths-mapped"])
def test_a_kill_during_the_rewrite_leaves_the_database_as_it_was_and_a_rerun_finishes(moved_install, step):
    install, backup, library = moved_install
    before = install.database.read_bytes()
    args = [str(backup), "--config", str(install.config), "--yes", "--map-path", f"/media/a={library}"]
    crashed = run_restore(*args, env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert install.database.read_bytes() == before  # the rewrite only ever touched the temp copy
    rerun = run_restore(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert str(library / "x") in folder_paths(install.database)
    assert not [p for p in install.root.rglob("*stash-backup-tmp*")]
