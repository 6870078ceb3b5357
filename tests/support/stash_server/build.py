"""Build a Stash server binary from the Go module proxy, cached per version.

    python -m tests.support.stash_server.build [VERSION ...]

Prints the path of each binary. The source comes from `go mod download` (never
committed); the binary is cached under $STASH_BACKUP_CACHE or
~/.cache/stash-backup/stash-<version>/stash so later runs start at once.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = "github.com/stashapp/stash"
# The newest stable release the proxy serves (has `includeBlobs`), and an older
# line without it. Tests that depend on a version's features name it.
NEW_VERSION = "v0.31.1"
OLD_VERSION = "v0.28.1"
PINNED_VERSIONS = (NEW_VERSION, OLD_VERSION)
BUILD_TAGS = "sqlite_stat4 sqlite_math_functions"


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    configured = os.environ.get("STASH_BACKUP_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "stash-backup"


def binary_path(version: str) -> Path:
    return cache_root() / f"stash-{version}" / "stash"


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def _require_go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("the Go toolchain is not on PATH: install Go (1.22+) to build the test Stash server")
    return go


def _download_source(go: str, version: str) -> Path:
    info = json.loads(_run([go, "mod", "download", "-json", f"{MODULE}@{version}"]))
    if info.get("Error"):
        raise BuildError(f"go mod download {MODULE}@{version}: {info['Error']}")
    return Path(info["Dir"])


def _copy_writable(source: Path, target: Path) -> None:
    # The module cache is read-only; code generation writes into the tree.
    shutil.copytree(source, target)
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            path = Path(root, name)
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _touch_ui(tree: Path) -> None:
    # Stash embeds ui/v2.5/build; its Makefile target `touch-ui` does exactly this.
    build = tree / "ui" / "v2.5" / "build"
    build.mkdir(parents=True, exist_ok=True)
    (build / "index.html").touch()


def build(version: str, log=print) -> Path:
    target = binary_path(version)
    if target.exists():
        return target
    go = _require_go()
    started = time.monotonic()
    log(f"building Stash {version} from the Go module proxy (first run only; cached at {target})")
    source = _download_source(go, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"stash-src-{version}-", dir=target.parent) as work:
        tree = Path(work) / "stash"
        _copy_writable(source, tree)
        _touch_ui(tree)
        env = dict(os.environ, CGO_ENABLED="1")
        _run([go, "generate", "./cmd/stash"], cwd=tree, env=env)
        ldflags = f"-X 'github.com/stashapp/stash/internal/build.version={version}'"
        partial = target.parent / f".stash.{os.getpid()}.partial"
        _run(
            [go, "build", "-tags", BUILD_TAGS, "-ldflags", ldflags, "-o", str(partial), "./cmd/stash"],
            cwd=tree,
            env=env,
        )
        os.replace(partial, target)
    log(f"built Stash {version} in {time.monotonic() - started:.0f} s")
    return target


def main(argv: list[str]) -> int:
    versions = argv or list(PINNED_VERSIONS)
    try:
        for version in versions:
            print(build(version, log=lambda m: print(m, file=sys.stderr)))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
