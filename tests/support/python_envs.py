"""Pythons and virtualenvs for the tests of where the plugin runs: the CPython versions
this machine has, a venv holding only `requests` (what Stash's official Docker image
offers a plugin), one holding nothing, and the wheel built from this checkout installed
into a clean venv. Packages come from PyPI through the test runner's pip (`pip
--python`, which resolves for the venv's own version); the venvs themselves get no pip,
so the plugin cannot install anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUPPORTED = ("3.9", "3.10", "3.11", "3.12", "3.13")  # our floor to the newest CPython here
RUNNER = "%d.%d" % sys.version_info[:2]


class PythonEnvError(RuntimeError):
    pass


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900, **kwargs)
    if result.returncode != 0:
        raise PythonEnvError(
            f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result


def python_for(version: str) -> str:
    """A CPython of that minor version (pyenv's, or one on PATH). Missing fails loudly."""
    if version == RUNNER:
        return sys.executable
    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    candidates += [Path(p) for p in [shutil.which(f"python{version}")] if p]
    for candidate in candidates:
        probe = subprocess.run(
            [str(candidate), "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return str(candidate)
    raise PythonEnvError(
        f"no CPython {version} on this machine (looked in ~/.pyenv/versions and PATH): "
        f"install it, e.g. pyenv install {version}"
    )


def make_venv(folder: Path, python: str, requirements: tuple = ()) -> str:
    """A fresh venv without pip holding only `requirements`; returns its python."""
    _run([python, "-m", "venv", "--without-pip", folder])
    executable = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if requirements:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                executable,
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *requirements,
            ]
        )
    return str(executable)


def build_wheel(out: Path) -> Path:
    """`pip wheel --no-deps` of a copy of this checkout (a build in place would leave
    build/ and *.egg-info in the repository)."""
    source = out / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "benchmarks"
        ),
    )
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check", "-w", out, source]
    )
    [wheel] = out.glob("stash_backup-*.whl")
    return wheel


def copy_of_checkout(target: Path) -> Path:
    """This checkout's tracked files laid out as a `git clone` of it would be, with
    their working-tree content: what a user who clones the repository has."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():  # not a file deleted and not yet committed
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def wheel_venv(folder: Path, python: str, wheel: Path) -> Path:
    """The wheel installed (not editable) into a clean venv with its dependencies from
    PyPI; returns the venv's bin folder (stash-backup, stash-restore)."""
    make_venv(folder, python, (str(wheel),))
    return folder / ("Scripts" if os.name == "nt" else "bin")


def clean_env(**extra: str) -> dict:
    """The environment of a user's shell: nothing pointing at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env
