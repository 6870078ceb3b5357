"""install-plugin and the plugin-manager package."""
import hashlib
import zipfile

import pytest
import yaml

from stash_backup_plugin.core.errors import UsageError
from stash_backup_plugin.cli.install import build_package, install_plugin, runtime_sources


def test_the_plugin_takes_its_layers_and_leaves_out_the_cli_and_the_restore_command():
    sources = set(runtime_sources())
    assert {"plugin/task.py", "plugin/run.py", "jobs.py", "server/download.py", "core/verify.py"} <= sources
    assert not {s for s in sources if s.startswith("cli/")}
    # The restore drill runs the offline restore's engine; its command line and salvage stay out.
    assert {"drill.py", "offline/restore.py", "offline/swap.py", "offline/plan.py", "offline/liveness.py"} <= sources
    assert not {"offline/cli.py", "offline/__main__.py", "offline/salvage.py"} & sources


def test_install_writes_one_manifest_named_for_the_id(tmp_path):
    target = install_plugin(tmp_path, "my-backup")
    assert sorted(p.name for p in target.rglob("*.yml")) == ["my-backup.yml"]
    assert (target / "stash_backup_plugin" / "plugin" / "task.py").is_file()
    assert oct((target / "my-backup.yml").stat().st_mode & 0o777) == "0o644"
    manifest = yaml.safe_load((target / "my-backup.yml").read_text())
    assert set(manifest) <= {"name", "description", "version", "url", "ui", "exec", "interface", "errLog",
                             "hooks", "tasks", "settings"}


def test_reinstall_removes_modules_that_are_gone(tmp_path):
    target = install_plugin(tmp_path)
    (target / "stash_backup_plugin" / "obsolete.py").write_text("x")
    (target / "stash_backup_plugin" / "core" / "gone.py").write_text("x")
    install_plugin(tmp_path)
    assert not (target / "stash_backup_plugin" / "obsolete.py").exists()
    assert not (target / "stash_backup_plugin" / "core" / "gone.py").exists()


def test_install_refuses_a_folder_with_another_yml(tmp_path):
    (tmp_path / "stash-backup").mkdir()
    (tmp_path / "stash-backup" / "notes.yml").write_text("x: 1")
    with pytest.raises(UsageError, match="other .yml"):
        install_plugin(tmp_path)


def test_install_refuses_missing_plugins_folder_and_bad_id(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        install_plugin(tmp_path / "nope")
    with pytest.raises(UsageError, match="invalid"):
        install_plugin(tmp_path, "../escape")


def test_package_zip_has_files_at_root_and_index_has_its_sha256(tmp_path):
    zip_path, index_path = build_package(tmp_path)
    index = yaml.safe_load(index_path.read_text())
    assert index[0]["id"] == "stash-backup" and index[0]["path"] == "stash-backup.zip"
    assert index[0]["sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    names = zipfile.ZipFile(zip_path).namelist()
    assert "stash-backup.yml" in names and "stash_backup_plugin/plugin/task.py" in names
    assert [n for n in names if n.endswith(".yml")] == ["stash-backup.yml"]
