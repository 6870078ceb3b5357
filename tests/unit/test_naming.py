from datetime import datetime

import pytest

from stash_backup_plugin.core.naming import (
    blob_member_name,
    is_anonymised_name,
    is_temp_name,
    parse_backup_name,
    zip_name_for,
)


def test_parses_stash_backup_names():
    parsed = parse_backup_name("stash-go.sqlite.85.20261126_180102")
    assert parsed.database_name == "stash-go.sqlite"
    assert parsed.schema_version == 85
    assert parsed.created == datetime(2026, 11, 26, 18, 1, 2)
    assert not parsed.is_zip
    assert str(parsed) == "stash-go.sqlite.85.20261126_180102"


def test_stashs_anonymised_database_is_not_a_backup():
    """ "Anonymise database" writes <db>.anonymous.<schema>.<time> beside the backups."""
    name = "stash-go.sqlite.anonymous.75.20261126_180102"
    assert parse_backup_name(name) is None and is_anonymised_name(name)
    assert not is_anonymised_name("stash-go.sqlite.75.20261126_180102")


def test_parses_full_backup_zip_names_and_custom_database_names():
    parsed = parse_backup_name("my.library.db.72.20250101_000000.zip")
    assert (parsed.database_name, parsed.schema_version, parsed.is_zip) == ("my.library.db", 72, True)


@pytest.mark.parametrize(
    "name",
    [
        "stash-go.sqlite",
        "stash-go.sqlite.85",
        "x.85.20261399_000000",
        "manifest.json",
        ".stash-go.sqlite.85.20261126_180102.stash-backup-tmp-abc",
    ],
)
def test_rejects_other_names(name):
    assert parse_backup_name(name) is None


def test_same_second_counter():
    from stash_backup_plugin.core.naming import with_counter

    assert with_counter("a.sqlite.85.20261126_180102.zip", 2) == "a.sqlite.85.20261126_180102-2.zip"
    parsed = parse_backup_name("a.sqlite.85.20261126_180102-2.zip")
    assert parsed.schema_version == 85 and parsed.is_zip


def test_zip_and_blob_names():
    assert zip_name_for("a.sqlite.85.20261126_180102") == "a.sqlite.85.20261126_180102.zip"
    assert zip_name_for("a.zip") == "a.zip"
    assert blob_member_name("ed02d1a604f367775f0750e9bdd4b087") == "blobs/ed/02/ed02d1a604f367775f0750e9bdd4b087"
    assert is_temp_name(".x.stash-backup-tmp-123") and not is_temp_name("x")
