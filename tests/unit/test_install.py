"""install-plugin and the plugin-manager package: what the plugin folder holds, the
bundled dependencies, and who owns what the installer creates."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from stash_backup_plugin import PLUGIN_ARCHIVE

from stash_backup_plugin import __version__
from stash_backup_plugin.cli.install import (
    NOT_IMPORTED,
    _requirements,
    archive_files,
    build_package,
    distribution_closure,
    install_plugin,
    manifest_text,
    runtime_sources,
)
from stash_backup_plugin.cli import install
from stash_backup_plugin.core.errors import MissingDependency, UsageError

REPO = Path(__file__).resolve().parents[2]
# The keys CommunityScripts' validator/plugin.schema.json allows.
MANIFEST_KEYS = {
    "name",
    "description",
    "version",
    "url",
    "ui",
    "exec",
    "interface",
    "errLog",
    "hooks",
    "tasks",
    "settings",
}


def test_the_plugin_takes_its_layers_and_leaves_out_the_cli_and_the_restore_command():
    sources = set(runtime_sources())
    assert {"plugin/task.py", "plugin/run.py", "jobs/download.py", "server/download.py", "core/verify.py"} <= sources
    assert not {s for s in sources if s.startswith("cli/")}
    # The restore drill runs the offline restore's engine; its command line and salvage stay out.
    assert {
        "jobs/drill.py",
        "jobs/offsite.py",
        "offline/restore.py",
        "offline/swap.py",
        "offline/plan.py",
        "offline/liveness.py",
    } <= sources
    assert not {"offline/cli.py", "offline/__main__.py", "offline/salvage.py"} & sources


def test_install_writes_the_manifest_and_the_archive_and_no_folder(tmp_path):
    """Stash's plugin manager removes listed files, then the plugin folder without
    recursing: a subfolder would outlive an uninstall. Its files are as readable as
    the plugins folder Stash reads them from (a usual 0755 one here)."""
    tmp_path.chmod(0o755)
    target = install_plugin(tmp_path, "my-backup")
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["my-backup.yml", PLUGIN_ARCHIVE, "backups.js", "backups.css"]
    )
    assert all(p.is_file() for p in target.iterdir())
    assert oct((target / "my-backup.yml").stat().st_mode & 0o777) == "0o644"
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    manifest = yaml.safe_load((target / "my-backup.yml").read_text())
    assert set(manifest) <= MANIFEST_KEYS
    assert manifest["exec"] == ["python", "{pluginDir}/" + PLUGIN_ARCHIVE]
    assert manifest["ui"]["javascript"] == ["backups.js"] and manifest["ui"]["css"] == ["backups.css"]
    # Derived from plugin.yml: only the paths differ (the clone's layout there, the installed one here).
    source = yaml.safe_load((REPO / "plugin.yml").read_text())
    assert {k: v for k, v in manifest.items() if k not in ("exec", "ui")} == {
        k: v for k, v in source.items() if k not in ("exec", "ui")
    }


def test_plugin_yml_at_the_top_is_the_only_manifest_and_the_only_yml_stash_would_load():
    """A clone in Stash's plugins folder is the plugin: Stash loads every *.yml under that
    folder (recursively, strictly parsed) as a plugin, so the repository holds no other;
    a .yml inside an installed package folder would be loaded too."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert [name for name in tracked if name.endswith((".yml", ".yaml"))] == ["plugin.yml"]
    assert not [name for name in tracked if name.endswith(".yml.in")]  # no second copy: the wheel's is built
    source = yaml.safe_load((REPO / "plugin.yml").read_text())
    assert source["version"] == __version__ and yaml.safe_load(manifest_text())["version"] == __version__
    assert source["exec"] == ["python", "{pluginDir}/plugin.py"] and (REPO / "plugin.py").is_file()
    assert all((REPO / path).is_file() for path in source["ui"]["javascript"] + source["ui"]["css"])


def test_the_wheel_carries_plugin_yml_under_a_name_stash_never_loads(python_envs):
    """install-plugin and package from a pip-installed wheel read it there."""
    with zipfile.ZipFile(python_envs.wheel()) as wheel:
        names = wheel.namelist()
        assert wheel.read("stash_backup_plugin/plugin/manifest.yml.in") == (REPO / "plugin.yml").read_bytes()
    assert not [name for name in names if name.endswith((".yml", ".yaml"))]


def test_a_manifest_whose_paths_moved_is_one_clear_error(tmp_path, monkeypatch):
    """The installed layout is derived by replacing each path plugin.yml names; one it
    no longer names must stop the install, not leave a manifest pointing at nothing."""
    moved = tmp_path / "plugin.yml"
    moved.write_text((REPO / "plugin.yml").read_text().replace("{pluginDir}/plugin.py", "{pluginDir}/main.py"))
    monkeypatch.setattr(install, "CHECKOUT_MANIFEST", moved)
    with pytest.raises(MissingDependency, match="names {pluginDir}/plugin.py 0 times"):
        manifest_text()
    with pytest.raises(MissingDependency):
        install_plugin(tmp_path)
    assert not (tmp_path / "stash-backup").exists()


def test_the_archive_holds_our_modules_and_gql_but_not_requests_nor_compiled_code(tmp_path):
    files = archive_files()
    record = json.loads(files["bundle.json"])
    assert {"gql", "graphql-core"} <= set(record["distributions"])
    assert record["python"] == "%d.%d.%d" % sys.version_info[:3]
    tops = {name.split("/")[1] for name in files if name.startswith("_vendor/")}
    assert {"gql", "graphql"} <= tops
    assert not tops & {
        "requests",
        "urllib3",
        "idna",
        "certifi",
        "charset_normalizer",
        "yarl",
        "multidict",
        "propcache",
        "yaml",
    }
    assert not [n for n in files if n.endswith((".so", ".pyd", ".yml"))]
    sources = [n for n in files if n.endswith(".py")]
    assert all(files[n + "c"].startswith(importlib.util.MAGIC_NUMBER) for n in sources)  # byte code for this Python
    assert len([n for n in files if n.endswith(".pyc")]) == len(sources)
    assert "stash_backup_plugin/plugin/task.py" in files and "__main__.py" in files
    assert not [n for n in files if n.startswith("stash_backup_plugin/cli/")]
    assert not {"stash_backup_plugin/offline/cli.py", "stash_backup_plugin/offline/salvage.py"} & set(files)


def test_what_the_bundle_leaves_out_is_never_imported_by_the_plugin():
    """yarl, multidict and propcache (C extensions) are gql dependencies that only its
    aiohttp/websockets transports and CLI import."""
    code = (
        "import json, sys\n"
        "import stash_backup_plugin.plugin.run, stash_backup_plugin.server.download, gql.transport.requests\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert not set(json.loads(result.stdout)) & NOT_IMPORTED


def test_requirements_follow_extras_and_keep_other_markers_optional(tmp_path):
    info = tmp_path / "demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "\n".join(
            [
                "Metadata-Version: 2.1",
                "Name: demo",
                "Version: 1.0",
                "Requires-Dist: plain-dep>=1",
                'Requires-Dist: old-python-dep; python_version < "3.11"',
                'Requires-Dist: wanted[fast]<2; extra == "requests"',
                'Requires-Dist: unwanted; extra == "aiohttp"',
                "Requires-Dist: both; python_version >= \"3.8\" and extra == 'requests'",
                "",
            ]
        )
    )
    dist = metadata.PathDistribution(info)
    assert sorted(_requirements(dist, frozenset({"requests"}))) == [
        ("both", frozenset(), True),
        ("old-python-dep", frozenset(), True),
        ("plain-dep", frozenset(), False),
        ("wanted", frozenset({"fast"}), False),
    ]


def test_a_dependency_the_installing_python_lacks_is_one_clear_error():
    with pytest.raises(MissingDependency, match="no-such-distribution-here.*pip install"):
        distribution_closure("no-such-distribution-here")


def test_reinstall_replaces_the_package_folder_layout(tmp_path):
    old = tmp_path / "stash-backup" / "stash_backup_plugin" / "core"
    old.mkdir(parents=True)
    (old / "gone.py").write_text("x")
    (tmp_path / "stash-backup" / "stash-backup.yml").write_text("exec: [python, old]")
    target = install_plugin(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["stash-backup.yml", PLUGIN_ARCHIVE, "backups.js", "backups.css"]
    )


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


def test_package_zip_has_the_plugin_files_at_its_root_and_index_has_its_sha256(tmp_path):
    zip_path, index_path = build_package(tmp_path)
    index = yaml.safe_load(index_path.read_text())
    assert index[0]["id"] == "stash-backup" and index[0]["path"] == "stash-backup.zip"
    assert index[0]["sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == sorted(
        ["stash-backup.yml", PLUGIN_ARCHIVE, "backups.js", "backups.css"]
    )


def test_what_the_installer_creates_gets_the_owner_of_its_folder(tmp_path):
    """Run as root for a Stash that runs as PUID/PGID 4321 (linuxserver, hotio images)."""
    assert os.geteuid() == 0, "this test needs root, as the installer in a container has"
    plugins, out = tmp_path / "plugins", tmp_path / "out"
    for folder in (plugins, out):
        folder.mkdir()
        os.chown(folder, 4321, 4322)
    target = install_plugin(plugins)
    build_package(out / "nested" / "source")
    created = [
        target,
        *target.iterdir(),
        out / "nested",
        out / "nested" / "source",
        *(out / "nested" / "source").iterdir(),
    ]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in created} == {(4321, 4322)}
