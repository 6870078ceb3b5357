"""The demo: a throwaway real Stash with sample content, the plugin's Backup and
Download tasks run through Stash, then an offline restore read back from Stash.

    ./scripts/demo

It only ever talks to the Stash it starts itself (in a temp folder, on a free port).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.stash_server.build import NEW_VERSION, BuildError, build  # noqa: E402
from tests.support.stash_server.server import StashServer, content_names, performer_image  # noqa: E402
from tests.support.stash_server.server import seed_content  # noqa: E402


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


# What a user types, and the module behind it (run with this Python, so the demo uses
# this checkout whatever else is on PATH).
COMMANDS = {"stash-backup": "stash_backup_plugin", "stash-restore": "stash_backup_plugin.offline"}


def run(command: str, *args: str) -> subprocess.CompletedProcess:
    print("$ " + " ".join((command, *args)), flush=True)
    result = subprocess.run([sys.executable, "-m", COMMANDS[command], *args], cwd=REPO, capture_output=True, text=True)
    for line in (result.stderr + result.stdout).strip().splitlines():
        print("  " + line)
    if result.returncode != 0:
        raise SystemExit(f"demo failed: {command} {' '.join(args)} exited {result.returncode}")
    return result


def plugin_lines(server: StashServer) -> list[str]:
    return [
        f"{line['level']:<7} {line['message']}"
        for line in reversed(server.logs())
        if "[Plugin / Stash Backup]" in line["message"]
    ]


def main() -> int:
    keep = "--keep" in sys.argv
    try:
        binary = build(NEW_VERSION, log=lambda m: print(m, flush=True))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="stash-backup-demo-"))
    server = StashServer(binary, root / "stash", NEW_VERSION)
    try:
        step(f"Starting a throwaway Stash {NEW_VERSION} in {server.root} on {server.url}")
        server.start()
        created = seed_content(server, performers=3)
        print(f"  sample content: {json.dumps(content_names(server))}")

        step("Installing the plugin the way a user does")
        run("stash-backup", "install-plugin", "--plugins-dir", str(server.plugins), "--url", server.url)

        for task in ("Backup database", "Download backup to archive", "Verify archive"):
            step(f"Running the plugin task '{task}' through Stash's task queue")
            job = server.run_plugin_task("stash-backup", task)
            print(f"  job {job['id']}: {job['status']}")
        for line in plugin_lines(server):
            print("  " + line)
        print(f"  the Backups page: {server.url}/plugins/stash-backup (also Settings > Tools > Backups)")

        archive = server.root / "stash-backup-archive"
        step("What the tasks produced")
        for folder in (server.backups, archive):
            for path in sorted(folder.iterdir()):
                if not path.name.startswith("."):
                    print(f"  {path}  ({path.stat().st_size:,} bytes)")
        entry = json.loads((archive / "manifest.json").read_text())["entries"][0]
        print(
            "  manifest entry: "
            + json.dumps(
                {k: entry[k] for k in ("file", "size", "schema_version", "blob_count", "source", "verified_ok")}
            )
        )
        backed_up = content_names(server)

        step("Changing content after the backup")
        server.graphql('mutation { performerCreate(input: {name: "added-after-backup"}) { id } }')
        server.graphql(
            "mutation($id: ID!) { performerDestroy(input: {id: $id}) }", {"id": created["performers"][1]["id"]}
        )
        print(f"  now: {json.dumps(content_names(server))}")

        step("Stopping Stash and restoring the archived backup offline")
        server.stop()
        run("stash-restore", entry["file"], "--archive", str(archive), "--config", str(server.config_path), "--yes")

        step("Starting Stash again and reading the content back from the server")
        server.start()
        restored = content_names(server)
        print(f"  restored: {json.dumps(restored)}")
        image_ok = performer_image(server, created["performers"][1]["id"]) == created["performers"][1]["image"]
        print(f"  performer-1's image bytes restored from the backup's blobs: {image_ok}")
        same = restored == backed_up and image_ok
        print(f"\nRestored content {'matches' if same else 'DOES NOT match'} the backup.")
        return 0 if same else 1
    finally:
        server.stop()
        if keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
