"""What the tests share besides fixtures: the repository's root, the command runners,
the plugin's install, the Pythons and the Stash servers the fixtures hand out
(tests/conftest.py turns these into fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.python_envs import RUNNER, build_wheel, make_venv, python_for, wheel_venv
from tests.support.stash_server.server import StashServer

REPO = Path(__file__).resolve().parents[2]


class PythonEnvs:
    """Session-wide Pythons for the plugin, made once each (PyPI through the runner's pip)."""

    def __init__(self, root: Path):
        self._root, self._made = root, {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make(self._root / "-".join(key))
        return self._made[key]

    def requests_only(self, version: str = RUNNER) -> str:
        """What Stash's official Docker image offers a plugin: the standard library and requests."""
        return self._once(("requests", version), lambda f: make_venv(f, python_for(version), ("requests",)))

    def bare(self, version: str = RUNNER) -> str:
        return self._once(("bare", version), lambda f: make_venv(f, python_for(version)))

    def wheel(self) -> Path:
        return self._once(("wheel",), lambda f: build_wheel(f))

    def wheel_cli(self, version: str = RUNNER) -> Path:
        """The bin folder of a clean venv with the wheel installed (not editable)."""
        return self._once(("cli", version), lambda f: wheel_venv(f, python_for(version), self.wheel()))


class ServerFactory:
    def __init__(self, binaries: dict, tmp_path: Path, request, plugin_python: str):
        self._binaries, self._tmp, self._request = binaries, tmp_path, request
        self._plugin_python = plugin_python
        self.servers: list[StashServer] = []

    def __call__(
        self,
        version: str,
        blobs_storage: str = "FILESYSTEM",
        name: str = "stash",
        install_plugin: bool = True,
        tls: bool | str = False,
        host: str = "127.0.0.1",
        config_via_env: bool = False,
        working_dir: Path | None = None,
        env: dict | None = None,
        **extra,
    ) -> StashServer:
        """Stash's python_path is a venv with only requests unless `python_path` says
        otherwise, and no plugin process may reach a package index."""
        extra.setdefault("python_path", self._plugin_python)
        server = StashServer(
            self._binaries[version],
            self._tmp / name,
            version,
            blobs_storage,
            extra_config=extra,
            tls=tls,
            host=host,
            config_via_env=config_via_env,
            working_dir=working_dir,
            env={"PIP_NO_INDEX": "1", **(env or {})},
        )
        self.servers.append(server)
        server.start()
        if install_plugin:
            install_plugin_into(server)
        return server

    def close(self) -> None:
        failed = getattr(self._request.node, "rep_call", None)
        for server in self.servers:
            server.stop()
            if failed is not None and failed.failed:
                print(f"\n--- log of Stash {server.version} in {server.root} ---\n{server.log_tail(80)}")


def install_plugin_into(server: StashServer, plugin_id: str = "stash-backup") -> Path:
    """Install as a user does: the CLI's install-plugin into the plugins folder."""
    result = run_cli(
        "install-plugin",
        "--plugins-dir",
        str(server.plugins),
        "--id",
        plugin_id,
        "--url",
        server.url.replace("https://", "http://"),  # reload is best effort; the test reloads
        *(["--api-key", server.api_key] if server.api_key else []),
    )
    assert result.returncode == 0, result.stderr
    server.reload_plugins()
    return server.plugins / plugin_id


def run_cli(
    *args: str,
    env: dict | None = None,
    module: str = "stash_backup_plugin",
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=full_env,
        input=input,
        timeout=600,
    )


def run_restore(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_cli(*args, module="stash_backup_plugin.offline", **kwargs)
