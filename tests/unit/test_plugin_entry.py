"""The entry Stash runs (plugin/task.py inside the installed archive): where imports
come from, and one error line with the exact fix when something does not import. Run
with real Pythons: a venv with nothing, one with only requests, the runner's own."""

import json
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from stash_backup_plugin import PLUGIN_ARCHIVE
from stash_backup_plugin.cli.install import install_plugin
from stash_backup_plugin.plugin.task import fix_command

from tests.support.python_envs import clean_env, copy_of_checkout

PAYLOAD = json.dumps({"server_connection": {}, "args": {"mode": "no-such-mode"}})
REACHED_THE_PLUGIN = "unknown task mode 'no-such-mode'"  # run.py answered: every import worked


def run_entry(python: str, plugin_dir: Path) -> tuple[str, str]:
    """Run the installed plugin as Stash does; returns (the error it answered, stderr)."""
    result = subprocess.run(
        [python, str(plugin_dir / PLUGIN_ARCHIVE)],
        input=PAYLOAD,
        capture_output=True,
        text=True,
        env=clean_env(PIP_NO_INDEX="1"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["error"], result.stderr


@pytest.mark.parametrize(
    "has_pip,managed,container,expected",
    [
        (True, False, False, '"/py" -m pip install "requests"'),
        (True, True, False, '"/py" -m pip install --target "/p/python-packages" "requests"'),
        (True, False, True, '"/py" -m pip install --target "/p/python-packages" "requests"'),
        (False, False, False, 'python3 -m pip --python "/py" install --target "/p/python-packages" "requests"'),
        (False, True, True, 'python3 -m pip --python "/py" install --target "/p/python-packages" "requests"'),
    ],
)
def test_the_fix_fits_the_environment(has_pip, managed, container, expected):
    """Externally managed (Alpine's Python in Stash's image) refuses pip; a container
    loses site-packages when re-created; the plugin folder keeps what --target puts there."""
    assert fix_command("requests", "/py", has_pip, managed, container, "/p/python-packages") == expected


def test_a_python_without_requests_gets_one_error_line_whose_fix_works(python_envs, tmp_path):
    bare = python_envs.bare()
    plugin_dir = install_plugin(tmp_path)
    error, stderr = run_entry(bare, plugin_dir)
    assert stderr == ""  # answered once, as the error: Stash logs it at error level
    assert "needs the Python package requests" in error and bare in error
    command = error.split("Fix, inside Stash's container: " if "container" in error else "Fix: ")[1]
    command = command.split(" (Stash's Python has no pip")[0]
    assert command == f'python3 -m pip --python "{bare}" install --target "{plugin_dir / "python-packages"}" "requests"'
    subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=600)  # the user's fix, from PyPI
    assert REACHED_THE_PLUGIN in run_entry(bare, plugin_dir)[0]
    assert sorted(p.name for p in plugin_dir.glob("*.yml")) == ["stash-backup.yml"]  # nothing Stash would load


def test_a_bundled_gql_that_does_not_load_names_itself_and_the_fix(python_envs, tmp_path):
    """As a bundle taken from a newer Python fails on an older one (gql 4.4 on 3.9)."""
    plugin_dir = install_plugin(tmp_path)
    archive = plugin_dir / PLUGIN_ARCHIVE
    with zipfile.ZipFile(archive) as bundle:
        files = {name: bundle.read(name) for name in bundle.namelist()}
    files["_vendor/gql/__init__.py"] = b"match = (\n"
    del files["_vendor/gql/__init__.pyc"]  # as on a Python whose magic number is not the builder's
    with zipfile.ZipFile(archive, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    error, stderr = run_entry(python_envs.requests_only(), plugin_dir)
    assert stderr == ""  # answered once, as the error: Stash logs it at error level
    assert "the gql that stash-backup brings (gql " in error and "SyntaxError" in error
    assert '"gql[requests]>=3.5"' in error and "--target" in error


@pytest.mark.parametrize("which", ["requests-only venv", "the runner's Python (has gql)", "python-packages"])
def test_where_gql_comes_from(python_envs, tmp_path, which):
    """The bundle only when the Python has no gql of its own, and then before
    site-packages; what a user put into python-packages first; requests always the
    Python's own."""
    plugin_dir = install_plugin(tmp_path)
    archive = plugin_dir / PLUGIN_ARCHIVE
    python = python_envs.requests_only() if which == "requests-only venv" else sys.executable
    if which == "python-packages":
        (plugin_dir / "python-packages" / "gql").mkdir(parents=True)
        (plugin_dir / "python-packages" / "gql" / "__init__.py").write_text("")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from stash_backup_plugin.plugin import task\n"
        "task.arrange_path(sys.argv[1], sys.argv[2])\n"
        "import gql, requests; print(gql.__file__); print(requests.__file__)"
    )
    result = subprocess.run(
        [python, "-c", code, str(archive), str(plugin_dir)], capture_output=True, text=True, env=clean_env(), check=True
    )
    gql_file, requests_file = result.stdout.split()
    expected = {
        "requests-only venv": str(archive / "_vendor" / "gql"),
        "the runner's Python (has gql)": "site-packages",
        "python-packages": str(plugin_dir / "python-packages" / "gql"),
    }[which]
    assert expected in gql_file
    assert "site-packages" in requests_file


def test_a_clone_of_the_repository_runs_the_plugin_and_names_python_packages_in_its_fix(python_envs, tmp_path):
    """plugin.yml runs plugin.py at the clone's top: with the runner's Python (it has
    gql) the task reaches the plugin; with only requests there is no bundle to fall
    back on, and the one error line's fix installs gql into the clone's python-packages."""
    clone = copy_of_checkout(tmp_path / "stash-backup")

    def run(python):
        result = subprocess.run(
            [python, str(clone / "plugin.py")],
            input=PAYLOAD,
            capture_output=True,
            text=True,
            env=clean_env(PIP_NO_INDEX="1"),
            timeout=120,
            cwd=tmp_path,
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        return json.loads(result.stdout)["error"]

    assert REACHED_THE_PLUGIN in run(sys.executable)
    requests_only = python_envs.requests_only()
    error = run(requests_only)
    assert "the gql in Stash's Python" in error and "No module named 'gql'" in error
    assert f'install --target "{clone / "python-packages"}" "gql[requests]>=3.5"' in error
