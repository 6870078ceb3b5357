"""Build Stash's real web UI (ui/v2.5) from the Go module's source, cached per version.

    python -m tests.support.stash_server.build_ui [VERSION]

The test servers are built without their UI (build.py embeds an empty index.html);
browser tests point a server at this build with `ui_location`. The source is the Go
module (the UI ships in it, unbuilt); its JavaScript dependencies come from the npm
registry through pnpm, the version Stash's package.json names (v0.29 and later), or
through yarn 1 where the source has a yarn.lock (v0.28 and earlier). The result (~5 MiB)
is cached under ~/.cache/stash-backup/stash-ui-<version>/; first build ~5 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.stash_server.build import (
    NEW_VERSION,
    BuildError,
    _copy_writable,
    _download_source,
    _require_go,
    cache_root,
)

# One dependency of Stash's UI (@silvermine/videojs-chromecast -> webcomponents.js) is
# pinned in pnpm-lock.yaml to a GitHub tarball; only the npm registry is reachable
# here, and it serves the same version (0.7.24) as a package.
_GITHUB_TARBALL = re.compile(r"https://codeload\.github\.com/webcomponents/webcomponentsjs/tar\.gz/[0-9a-f]+")
_REGISTRY_VERSION = "0.7.24"
_REGISTRY_INTEGRITY = "sha512-YICWfSBmTB1mkhYlSqfTBN6vtunG+sacpzDF13K7fXsj03BGB3QfETF7f0fuMV/P/4GwSr4yiRNeeRk91p5tUg=="


def ui_path(version: str = NEW_VERSION) -> Path:
    return cache_root() / f"stash-ui-{version}"


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def pin_registry_tarball(lockfile: str) -> str:
    """The lockfile with the GitHub tarball of webcomponents.js replaced by the same
    version from the npm registry."""
    match = _GITHUB_TARBALL.search(lockfile)
    if not match:
        return lockfile
    url = match.group(0)
    lockfile = lockfile.replace(
        f"  webcomponents.js@{url}:\n    resolution: {{tarball: {url}}}\n    version: {_REGISTRY_VERSION}\n",
        f"  webcomponents.js@{_REGISTRY_VERSION}:\n    resolution: {{integrity: {_REGISTRY_INTEGRITY}}}\n",
    )
    lockfile = lockfile.replace(f"webcomponents.js@{url}: {{}}", f"webcomponents.js@{_REGISTRY_VERSION}: {{}}")
    lockfile = lockfile.replace(f"webcomponents.js: {url}", f"webcomponents.js: {_REGISTRY_VERSION}")
    if "codeload.github.com" in lockfile:
        raise BuildError("pnpm-lock.yaml still names a GitHub tarball after pinning: update build_ui.py")
    return lockfile


# v0.28's yarn.lock names the same dependency as a git URL, and yarn 1 fetches a git
# pattern with git whatever the lock entry says. package.json's `resolutions` turns the
# pattern into the registry version; the lock entry answers both patterns.
_YARN_GIT_PATTERN = "webcomponents.js@git+https://git@github.com/webcomponents/webcomponentsjs.git#v0.7.24"
_YARN_GIT_ENTRY = re.compile(
    r'(?m)^"' + re.escape(_YARN_GIT_PATTERN) + r'":\n  version "0\.7\.24"\n  resolved "git\+[^"\n]+"\n'
)
_YARN_REGISTRY_TARBALL = "https://registry.yarnpkg.com/webcomponents.js/-/webcomponents.js-0.7.24.tgz"
YARN = "yarn@1.22.22"


def pin_yarn_registry_tarball(lockfile: str) -> str:
    """yarn.lock with the git source of webcomponents.js replaced by the registry's."""
    lockfile = _YARN_GIT_ENTRY.sub(
        f'webcomponents.js@{_REGISTRY_VERSION}, "{_YARN_GIT_PATTERN}":\n  version "{_REGISTRY_VERSION}"\n'
        f'  resolved "{_YARN_REGISTRY_TARBALL}"\n  integrity {_REGISTRY_INTEGRITY}\n',
        lockfile,
    )
    if re.search(r'(?m)^  resolved "git\+', lockfile):
        raise BuildError("yarn.lock still resolves a package from git after pinning: update build_ui.py")
    return lockfile


def pin_yarn_resolution(package_json: str) -> str:
    package = json.loads(package_json)
    package.setdefault("resolutions", {})["webcomponents.js"] = _REGISTRY_VERSION
    return json.dumps(package, indent=2) + "\n"


def _package_manager(ui_dir: Path) -> list[str]:
    """The command that installs and runs the UI's scripts: yarn 1 for a yarn.lock, else pnpm."""
    if (ui_dir / "yarn.lock").is_file():
        if not shutil.which("npx"):
            raise BuildError("npx (Node.js 18+) is needed to build Stash's web UI for the browser tests")
        return ["npx", "--yes", YARN]
    return _pnpm(ui_dir)


def _pin_lockfile(ui_dir: Path) -> list[str]:
    """Rewrite the lockfile to fetch only from the npm registry; the install arguments."""
    yarn_lock, pnpm_lock = ui_dir / "yarn.lock", ui_dir / "pnpm-lock.yaml"
    if yarn_lock.is_file():
        yarn_lock.write_text(pin_yarn_registry_tarball(yarn_lock.read_text()))
        package = ui_dir / "package.json"
        package.write_text(pin_yarn_resolution(package.read_text()))
        return ["install", "--frozen-lockfile", "--non-interactive"]
    pnpm_lock.write_text(pin_registry_tarball(pnpm_lock.read_text()))
    return ["install", "--frozen-lockfile"]


def _pnpm(ui_dir: Path) -> list[str]:
    manager = json.loads((ui_dir / "package.json").read_text()).get("packageManager", "pnpm@10")
    version = manager.split("+", 1)[0]  # "pnpm@10.30.3+sha512..." -> "pnpm@10.30.3"
    if not shutil.which("npx"):
        raise BuildError("npx (Node.js 18+) is needed to build Stash's web UI for the browser tests")
    return ["npx", "--yes", version]


def build_ui(version: str = NEW_VERSION, log=print) -> Path:
    target = ui_path(version)
    if (target / "index.html").is_file():
        return target
    source = _download_source(_require_go(), version)
    started = time.monotonic()
    log(f"building Stash's web UI {version} (first run only; cached at {target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"stash-ui-src-{version}-", dir=target.parent) as work:
        tree = Path(work)
        _copy_writable(source / "ui", tree / "ui")
        _copy_writable(source / "graphql", tree / "graphql")  # codegen reads ../../graphql
        ui_dir = tree / "ui" / "v2.5"
        install = _pin_lockfile(ui_dir)
        env = dict(os.environ, VITE_APP_NOLEGACY="true", VITE_APP_STASH_VERSION=version, CI="true")
        manager = _package_manager(ui_dir)
        _run([*manager, *install], ui_dir, env)
        _run([*manager, "run", "gqlgen"], ui_dir, env)
        _run([*manager, "run", "build"], ui_dir, env)
        staged = target.parent / f".stash-ui-{version}.{os.getpid()}.partial"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(ui_dir / "build", staged)
        shutil.rmtree(target, ignore_errors=True)  # a build without index.html is unusable
        os.replace(staged, target)
    log(f"built Stash's web UI {version} in {time.monotonic() - started:.0f} s")
    return target


def main(argv: list[str]) -> int:
    try:
        print(build_ui(*(argv[:1] or [NEW_VERSION]), log=lambda m: print(m, file=sys.stderr)))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
