"""Stash's settings in every backup (no server): what is gathered and what is left out,
the record's settings section (checked like untrusted input), collection, export, the
off-site copy without them, and stash-restore --with-settings onto a new machine."""

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from stash_backup_plugin.core import record as records
from stash_backup_plugin.core import settings, stored
from stash_backup_plugin.core.errors import VerificationError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.store import Store
from stash_backup_plugin.core.verify import file_digest
from tests.support.harness import run_cli, run_restore
from tests.support.restore_fixtures import make_install
from tests.support.stashlike import add_library, folder_paths, make_database, vacuum_copy, write_blobs


def write(path: Path, data, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)
    return path


def config_folder(root: Path) -> Path:
    """A Stash config folder as a real one looks after a while."""
    write(root / "config.yml", "api_key: secret-key\nstash:\n- path: /media/a\n", 0o600)
    write(root / "custom.css", "body { color: red }")
    write(root / "custom-locales.json", "{}")
    write(root / "plugins" / "tagger" / "tagger.yml", "name: Tagger")
    write(root / "plugins" / "tagger" / "tagger.py", "print('x')", 0o755)
    write(root / "plugins" / "tagger" / "__pycache__" / "tagger.cpython-311.pyc", b"\0" * 10)
    write(root / "plugins" / "web" / "node_modules" / "left-pad" / "index.js", "x")
    write(root / "scrapers" / "community" / "site.yml", "name: Site")
    write(root / "scrapers" / "community" / ".git" / "HEAD", "ref")
    write(root / "stash-go.sqlite", b"SQLite format 3\0")
    write(root / "stash-go.sqlite-wal", b"w")
    write(root / "stash-go.sqlite.84.20261101_000000", b"SQLite format 3\0")
    write(root / "generated" / "screenshots" / "a.jpg", b"jpg")
    write(root / "cache" / "x", b"c")
    write(root / "blobs" / "aa" / "bb" / "aabb", b"image")
    write(root / "stash.log", "log")
    write(root / "Thumbs.db", b"thumbs")
    write(root / "ffmpeg", b"\x7fELF")
    write(root / "archive" / "manifest.json", "{}")  # an archive of ours, inside the config folder
    (root / "archive" / "backups").mkdir()
    write(root / "elsewhere-archive" / "x", "archive")  # the archive named by its path
    write(root / "plugins" / "big" / "cache.bin", b"\0" * (settings.MAX_FILE_BYTES + 1))
    os.symlink("/etc/passwd", root / "plugins" / "link")
    return root / "config.yml"


def gather(config: Path, warnings: list) -> settings.Gathered:
    sources = settings.sources_for(config, {"database": "stash-go.sqlite"}, config.parent / "elsewhere-archive")
    return settings.gather(sources, warnings.append)


def test_the_settings_are_everything_that_cannot_be_made_again(tmp_path):
    warnings = []
    gathered = gather(config_folder(tmp_path / "stash"), warnings)
    paths = sorted(f.path for f, _ in gathered.files)
    assert paths == [
        "config.yml",
        "custom-locales.json",
        "custom.css",
        "plugins/tagger/tagger.py",
        "plugins/tagger/tagger.yml",
        "scrapers/community/site.yml",
    ]
    by_path = {f.path: f for f, _ in gathered.files}
    assert by_path["config.yml"].mode == 0o600 and by_path["plugins/tagger/tagger.py"].mode == 0o755
    assert by_path["custom.css"].md5 == hashlib.md5(b"body { color: red }").hexdigest()
    assert gathered.files == sorted(gathered.files)
    named = " ".join(warnings)
    assert "plugins/big/cache.bin (larger than 16 MiB)" in named and "plugins/link (a symbolic link" in named
    assert len(warnings) == 2  # the rest is left out by the table, silently


def test_plugins_and_scrapers_outside_the_config_folder_are_roots_of_their_own(tmp_path):
    config = write(tmp_path / "conf" / "config.yml", "a: 1")
    write(tmp_path / "elsewhere" / "plugins" / "p" / "p.yml", "name: P")
    sources = settings.sources_for(config, {"plugins": str(tmp_path / "elsewhere" / "plugins")}, None)
    gathered = settings.gather(sources, [].append)
    assert sorted((f.root, f.path) for f, _ in gathered.files) == [("config", "config.yml"), ("plugins", "p/p.yml")]


def test_a_folder_too_large_to_be_settings_is_left_out_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "MAX_FILES", 3)
    warnings = []
    assert gather(config_folder(tmp_path / "stash"), warnings) is None
    assert len(warnings) == 1 and "more than 3 files" in warnings[0]


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "C:/x", "a\\..\\b", "a/\x00", "", "x" * 2000],
)
def test_a_settings_line_whose_path_would_leave_its_folder_is_refused(path):
    line = f"f {'0' * 32} 1 644 config {json.dumps(path)}\n"
    with pytest.raises(settings.SettingsError):
        settings.parse_line(line, "record")


@pytest.mark.parametrize(
    "line",
    [
        f'f {"0" * 32} 1 644 etc "passwd"',  # unknown root
        f'f {"0" * 32} {settings.MAX_FILE_BYTES + 1} 644 config "a"',  # larger than any settings file
        f'f {"0" * 31} 1 644 config "a"',
        f'f {"0" * 32} 1 9999 config "a"',
        f"f {'0' * 32} 1 644 config a",
    ],
)
def test_a_malformed_settings_line_is_refused(line):
    with pytest.raises(settings.SettingsError):
        settings.parse_line(line, "record")


class Library:
    def __init__(self, root: Path):
        self.root = root
        self.config = config_folder(root)
        self.database, self.blobs = root / "stash-go.sqlite", root / "blobs"
        self.database.unlink()
        self.images = make_database(self.database, schema=85, performers=3)
        write_blobs(self.blobs, self.images)

    def backup(self, store: Store, name: str, with_settings: bool = True, warnings=None):
        copy = vacuum_copy(self.database, self.root.parent / f"{name}.sqlite")
        new = stored.checked_backup(name, copy, file_digest(copy), "quick", includes_blobs=True, source="filesystem")
        if with_settings:
            new.settings = gather(self.config, warnings if warnings is not None else [])
        return stored.store_backup(store, new, stored.FolderSource([self.blobs]), Reporter())


def name(n: int) -> str:
    return f"stash-go.sqlite.85.2026110{n}_030000"


@pytest.fixture
def lib(tmp_path):
    return Library(tmp_path / "stash")


def test_a_backup_stores_its_settings_once_and_lists_them_apart_from_its_images(lib, tmp_path):
    store = Store(tmp_path / "archive")
    header = lib.backup(store, name(1))
    assert header.format == records.FORMAT_WITH_SETTINGS and header.settings["files"] == 6
    assert header.settings["new_files"] == 6 and header.blob_count == len(lib.images)
    listed = store.settings(name(1))
    assert [f.path for f in listed] == sorted(
        [f.path for f in listed], key=lambda p: next(f.md5 for f in listed if f.path == p)
    )
    with store.blob_list(name(1), images_only=True) as images:
        assert [c for c, _ in images] == sorted(lib.images)
    with store.blob_list(name(1)) as everything:
        assert [c for c, _ in everything] == sorted(set(lib.images) | {f.md5 for f in listed})
    for settings_file in listed:
        stored_copy = store.blob_path(settings_file.md5)
        assert hashlib.md5(stored_copy.read_bytes()).hexdigest() == settings_file.md5
        assert stored_copy.stat().st_mode & 0o077 == 0  # config.yml's secrets stay private

    write(lib.root / "custom.css", "body { color: blue }")
    again = lib.backup(store, name(2))
    assert again.settings["new_files"] == 1 and again.settings["new_bytes"] == len("body { color: blue }")


def test_an_image_and_a_settings_file_with_the_same_bytes_are_one_blob(lib, tmp_path):
    image = next(iter(lib.images))
    write(lib.root / "plugins" / "same.bin", lib.images[image])
    store = Store(tmp_path / "archive")
    lib.backup(store, name(1))
    with store.blob_list(name(1)) as everything:
        checksums = [c for c, _ in everything]
    assert checksums.count(image) == 1 and checksums == sorted(checksums)


def test_collection_keeps_the_settings_of_kept_backups_only(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, name(1))
    old_css = hashlib.md5(b"body { color: red }").hexdigest()
    write(lib.root / "custom.css", "body { color: blue }")
    lib.backup(store, name(2))
    store.forget(name(1))
    plan = stored.plan_collection(store)
    assert [c for c, _ in plan.delete_blobs] == [old_css]
    stored.collect(store, plan, Reporter())
    assert stored.check_blobs(store, [name(2)], stored.ReadData(), Reporter()) == {name(2): []}
    for settings_file in store.settings(name(2)):
        assert store.blob_path(settings_file.md5).is_file()


def test_verify_finds_a_damaged_settings_file(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, name(1))
    css = next(f for f in store.settings(name(1)) if f.path == "custom.css")
    store.blob_path(css.md5).write_bytes(b"body { color: RED }")
    problems = stored.check_blobs(store, [name(1)], stored.ReadData(), Reporter())
    assert len(problems[name(1)]) == 1 and css.md5 in problems[name(1)][0]


def test_the_exported_zip_holds_the_images_and_not_the_settings(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, name(1))
    out = stored.export_zip(store, name(1), tmp_path / "out" / "exported.zip", Reporter())
    with zipfile.ZipFile(out) as packed:
        blobs = sorted(n.rsplit("/", 1)[-1] for n in packed.namelist() if n.startswith("blobs/"))
    assert blobs == sorted(lib.images)


def test_a_damaged_settings_section_refuses_the_whole_record(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, name(1))
    path = store.record_path(name(1))
    import gzip

    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.startswith("f ") and '"custom.css"' in line)
    lines[index] = lines[index].replace('"custom', '"../../custom')
    path.write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(VerificationError, match="would leave its folder"):
        store.settings(name(1))
    with pytest.raises(VerificationError):
        with store.blob_list(name(1)) as everything:
            list(everything)


def test_a_record_without_settings_is_the_same_backup_for_a_plain_remote(lib, tmp_path):
    store = Store(tmp_path / "archive")
    header = lib.backup(store, name(1))
    stripped = tmp_path / "stripped.record"
    records.write_without_settings(store.record_path(name(1)), stripped)
    copy = records.read_header(stripped)
    assert copy.format == records.FORMAT and copy.settings == {}
    assert copy.snapshot == header.snapshot and copy.blob_count == header.blob_count
    with records.BlobList(stripped) as blobs:
        assert [c for c, _ in blobs] == sorted(lib.images)


def test_a_record_of_the_first_format_still_reads(lib, tmp_path):
    store = Store(tmp_path / "archive")
    header = lib.backup(store, name(1), with_settings=False)
    assert header.format == records.FORMAT and store.settings(name(1)) == []
    with store.blob_list(name(1)) as blobs:
        assert [c for c, _ in blobs] == sorted(lib.images)


# --- snapshot --offline + stash-restore --with-settings (the real commands) ---------------------


def test_settings_round_trip_onto_a_new_machine_with_the_library_moved(tmp_path):
    install = make_install(tmp_path / "old")
    add_library(install.database, {"/media/a": 2})
    values = yaml.safe_load(install.config.read_text())
    values.update(api_key="secret-key", stash=[{"path": "/media/a", "excludevideo": False}])
    install.config.write_text(yaml.safe_dump(values))
    write(install.root / "custom.css", "body { color: red }")
    write(install.root / "plugins" / "p" / "p.py", "print(1)", 0o750)
    archive = tmp_path / "archive"
    made = run_cli("snapshot", "--offline", "--config", str(install.config), "--dest", str(archive), "--json")
    assert made.returncode == 0, made.stderr
    backup = json.loads(made.stdout)["file"]

    new = tmp_path / "new" / ".stash" / "config.yml"
    args = [backup, "--archive", str(archive), "--config", str(new), "--map-path", "/media/a=/data/library"]
    mistyped = run_restore(*args, "--yes")  # without --with-settings a missing config.yml is a mistake
    assert mistyped.returncode != 0 and "add --with-settings" in mistyped.stderr and not (tmp_path / "new").exists()
    args.append("--with-settings")
    dry = run_restore(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "restore 3 settings file(s)" in dry.stderr and not (tmp_path / "new").exists()
    done = run_restore(*args, "--yes")
    assert done.returncode == 0, done.stderr
    restored = yaml.safe_load(new.read_text())
    assert restored["api_key"] == "secret-key" and restored["stash"][0]["path"] == "/data/library"
    assert (new.parent / "custom.css").read_text() == "body { color: red }"
    assert os.stat(new.parent / "plugins" / "p" / "p.py").st_mode & 0o777 == 0o700  # private, still executable
    assert os.stat(new).st_mode & 0o077 == 0  # config.yml's secrets: its owner's alone
    # Stash's own files named inside the old config folder moved with it to the new one.
    assert restored["database"] == str(new.parent / "stash-go.sqlite")
    assert restored["blobs_path"] == str(new.parent / "blobs")
    assert folder_paths(new.parent / "stash-go.sqlite") == {"/data/library": "library"}
    assert sorted(p.name for p in (new.parent / "blobs").rglob("*") if p.is_file()) == sorted(install.images)


def test_with_settings_on_a_machine_that_has_them_keeps_the_current_files_aside(tmp_path):
    install = make_install(tmp_path / "stash")
    write(install.root / "custom.css", "old")
    archive = tmp_path / "archive"
    made = run_cli("snapshot", "--offline", "--config", str(install.config), "--dest", str(archive), "--json")
    assert made.returncode == 0, made.stderr
    backup = json.loads(made.stdout)["file"]
    write(install.root / "custom.css", "changed since")
    result = run_restore(backup, "--archive", str(archive), "--config", str(install.config), "--with-settings", "-y")
    assert result.returncode == 0, result.stderr
    assert (install.root / "custom.css").read_text() == "old"
    kept = list(install.root.glob("stash-restore-*/settings/config/custom.css"))
    assert len(kept) == 1 and kept[0].read_text() == "changed since"


def test_with_settings_refuses_a_backup_that_holds_none(tmp_path):
    install = make_install(tmp_path / "stash")
    archive = tmp_path / "archive"
    made = run_cli(
        "snapshot", "--offline", "--no-settings", "--config", str(install.config), "--dest", str(archive), "--json"
    )
    assert made.returncode == 0, made.stderr
    backup = json.loads(made.stdout)["file"]
    before = install.database.read_bytes()
    result = run_restore(backup, "--archive", str(archive), "--config", str(install.config), "--with-settings", "-y")
    assert result.returncode != 0 and "holds no settings" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert install.database.read_bytes() == before


# --- off-site: a plain remote gets no secrets unless asked; a crypt remote carries them -------


def push(archive: Path, remote: str, config: Path, *extra: str):
    return run_cli(
        "offsite", "push", "--remote", remote, "--rclone-config", str(config), "--dest", str(archive), *extra
    )


def remote_record(folder: Path, backup: str) -> list[str]:
    import gzip

    return gzip.decompress((folder / "backups" / f"{backup}.record").read_bytes()).decode().splitlines()


def offsite_archive(lib: Library, tmp_path: Path) -> tuple[Path, str, str]:
    """The archive (marked verified in its manifest by `verify`), its backup, config.yml's blob."""
    archive = tmp_path / "archive"
    lib.backup(Store(archive), name(1))
    assert run_cli("verify", "--dest", str(archive)).returncode == 0
    config_md5 = next(f.md5 for f in Store(archive).settings(name(1)) if f.path == "config.yml")
    return archive, name(1), config_md5


def test_a_plain_remote_gets_the_backup_without_its_settings_unless_asked(lib, tmp_path):
    archive, backup, config_md5 = offsite_archive(lib, tmp_path)
    rclone_config = write(tmp_path / "rclone.conf", "")
    plain = tmp_path / "plain"
    result = push(archive, str(plain), rclone_config)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("were left out of 1 backup(s)") == 1 and "--with-settings" in result.stderr
    lines = remote_record(plain, backup)
    assert json.loads(lines[0])["format"] == 1 and not any(line.startswith("f ") for line in lines)
    assert not (plain / "blobs" / config_md5[:2] / config_md5[2:4] / config_md5).exists()
    assert b"secret-key" not in b"".join(p.read_bytes() for p in plain.rglob("*") if p.is_file())
    check = run_cli("offsite", "verify", "--remote", str(plain), "--rclone-config", str(rclone_config), "--read-data")
    assert check.returncode == 0, check.stderr

    asked = tmp_path / "asked"
    result = push(archive, str(asked), rclone_config, "--with-settings")
    assert result.returncode == 0, result.stderr
    assert "left out" not in result.stderr
    assert any(line.startswith("f ") for line in remote_record(asked, backup))
    assert (asked / "blobs" / config_md5[:2] / config_md5[2:4] / config_md5).is_file()


def test_a_crypt_remote_carries_the_settings_and_a_pull_brings_them_back(lib, tmp_path):
    from tests.support.offsite_servers import obscure

    archive, backup, config_md5 = offsite_archive(lib, tmp_path)
    vault = tmp_path / "vault"
    rclone_config = write(
        tmp_path / "rclone.conf", f"[vault]\ntype = crypt\nremote = {vault}\npassword = {obscure('pw')}\n"
    )
    result = push(archive, "vault:stash", rclone_config)
    assert result.returncode == 0, result.stderr
    assert "left out" not in result.stderr
    assert b"secret-key" not in b"".join(p.read_bytes() for p in vault.rglob("*") if p.is_file())
    pulled = tmp_path / "pulled"
    back = run_cli(
        "offsite", "pull", backup, "--remote", "vault:stash", "--rclone-config", str(rclone_config), "--to", str(pulled)
    )
    assert back.returncode == 0, back.stderr
    assert [f.md5 for f in Store(pulled).settings(backup)] == [f.md5 for f in Store(archive).settings(backup)]
    assert Store(pulled).blob_path(config_md5).read_bytes() == (lib.root / "config.yml").read_bytes()


def test_a_record_rewritten_with_a_new_header_keeps_its_images_and_settings(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, name(1))
    path = store.record_path(name(1))
    with store.blob_list(name(1)) as before:
        listed = list(before)
    header = store.header(name(1))
    header.added_at = "2026-01-01T00:00:00+00:00"
    records.rewrite_header(path, header)
    assert store.header(name(1)).added_at == header.added_at and store.settings(name(1))
    with store.blob_list(name(1)) as after:
        assert list(after) == listed


def test_list_says_which_backups_hold_settings_and_counts_their_bytes(tmp_path):
    install = make_install(tmp_path / "stash")
    write(install.root / "custom.css", "body {}")
    archive = tmp_path / "archive"
    for extra in ((), ("--no-settings",)):
        made = run_cli("snapshot", "--offline", *extra, "--config", str(install.config), "--dest", str(archive))
        assert made.returncode == 0, made.stderr
    listed = run_cli("list", "--json", "--dest", str(archive))
    rows = sorted(json.loads(listed.stdout), key=lambda row: row["settings_files"])
    assert [row["settings_files"] for row in rows] == [0, 2]  # config.yml and custom.css
    store = Store(archive)
    with_settings = store.header(rows[1]["file"])
    assert with_settings.new_bytes >= with_settings.settings["new_bytes"] > 0
    text = run_cli("list", "--dest", str(archive)).stdout
    assert text.count("+ settings") == 1
