"""--salvage on a damaged database: a recovered copy, row counts, original untouched."""

import hashlib
import shutil
import subprocess

import pytest

from stash_backup_plugin.offline import salvage as module
from stash_backup_plugin.core.errors import RestoreRefused
from stash_backup_plugin.offline.salvage import salvage

from tests.support.harness import run_restore
from tests.support.stashlike import make_database


def damaged_database(tmp_path):
    path = tmp_path / "broken.sqlite"
    make_database(path, performers=200, wal=False)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    last_page = len(data) // page_size - 1
    data[last_page * page_size : last_page * page_size + 64] = b"\xee" * 64
    path.write_bytes(bytes(data))
    return path


def sqlite3_can_recover() -> bool:
    """.recover reads pages through the sqlite_dbpage table. Debian 12's sqlite3 (3.40.1)
    is built without it, and there .recover fails on every database, damaged or not."""
    probe = subprocess.run(["sqlite3", ":memory:", "SELECT count(*) FROM sqlite_dbpage"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("use_cli", [True, False], ids=["sqlite3-recover", "table-by-table"])
def test_salvage_recovers_rows_and_never_modifies_the_original(tmp_path, monkeypatch, use_cli):
    if use_cli and not shutil.which("sqlite3"):
        pytest.fail("the sqlite3 program is needed for this case: apt-get install sqlite3")
    if not use_cli:
        monkeypatch.setattr(module.shutil, "which", lambda name: None)
    original = damaged_database(tmp_path)
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    report = salvage(original, tmp_path / "recovered.sqlite")
    assert hashlib.sha256(original.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.sqlite", "recovered.sqlite"]
    # The method is the one this machine's tools allow, not whichever happened to run.
    expected = "sqlite3 .recover" if use_cli and sqlite3_can_recover() else "table-by-table copy"
    assert report.method == expected
    # Only the last page is damaged: the rows on the others must all come back.
    assert report.rows["schema_migrations"] == (1, 1)
    assert report.rows["blobs"][1] == 200
    assert 150 <= report.rows["performers"][1] <= 200


def test_salvage_never_overwrites(tmp_path):
    original = damaged_database(tmp_path)
    (tmp_path / "out.sqlite").write_text("mine")
    with pytest.raises(RestoreRefused, match="already exists"):
        salvage(original, tmp_path / "out.sqlite")
    assert (tmp_path / "out.sqlite").read_text() == "mine"


def test_salvage_cli_prints_row_counts(tmp_path):
    original = damaged_database(tmp_path)
    result = run_restore("--salvage", str(original), "--output", str(tmp_path / "out.sqlite"))
    assert result.returncode == 0, result.stderr
    assert "performers" in result.stdout and "original" in result.stdout


@pytest.mark.parametrize("folder", ["backups #1", "what?", "100%25 sure"])
def test_salvage_into_a_folder_whose_name_a_uri_would_cut(tmp_path, monkeypatch, folder):
    """The recovered copy is read back as a URI: an unescaped `#` or `?` ended the path
    there (opening, even creating, another file) and `%25` became `%`."""
    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    original = damaged_database(tmp_path)
    out_folder = tmp_path / folder
    report = salvage(original, out_folder / "recovered.sqlite")
    assert report.method == "table-by-table copy"
    assert report.rows["blobs"] == (200, 200)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["broken.sqlite", folder])
    assert [p.name for p in out_folder.iterdir()] == ["recovered.sqlite"]
