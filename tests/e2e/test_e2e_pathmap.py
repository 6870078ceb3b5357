"""A library moved to another place (/media/a -> /data/library, as a move to Docker or
a new drive does), restored into a fresh Stash with stash-restore --map-path, then
scanned by the real Stash: the same scenes with the same ids, no new scene, the play
history, o-counter and tags kept. The same moved library restored without the
mapping is scanned too, for the time it takes and what Stash makes of it."""

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.stash_server.server import move_library

from tests.support.harness import run_cli, run_restore

pytestmark = pytest.mark.e2e

VIDEOS = {"a.mp4": "testsrc", "b.mp4": "testsrc2", "sub/c.mp4": "smptebars", "sub/deeper/d.mkv": "rgbtestsrc"}
SCENES = (
    '{ findScenes(filter: {per_page: -1, sort: "id"}) { count scenes { id play_count o_counter '
    "tags { name } files { id path fingerprints { type value } } } } }"
)


def make_videos(folder: Path) -> None:
    """Small real videos, each a different picture (so a different fingerprint)."""
    for name, source in VIDEOS.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"{source}=duration=2:size=160x120:rate=10",
                "-pix_fmt",
                "yuv420p",
                str(target),
            ],
            check=True,
            timeout=120,
        )


def library_setting(folder: Path) -> list:
    return [{"path": str(folder), "excludevideo": False, "excludeimage": False}]


def clean(server) -> None:
    """Stash's Clean task (not a dry run): it deletes the files it cannot find, and the
    scenes left without a file."""
    job = server.graphql("mutation { metadataClean(input: {dryRun: false}) }")
    finished = server.wait_for_job(job["metadataClean"], timeout=300, what="clean")
    assert finished["status"] == "FINISHED", (finished, server.log_tail())


def scenes(server) -> dict:
    """scene id -> what must survive the move (paths relative to the library)."""
    found = server.graphql(SCENES)["findScenes"]["scenes"]
    return {
        s["id"]: {
            "play_count": s["play_count"],
            "o_counter": s["o_counter"],
            "tags": sorted(t["name"] for t in s["tags"]),
            "files": sorted(
                (f["id"], Path(f["path"]).name, sorted((p["type"], p["value"]) for p in f["fingerprints"]))
                for f in s["files"]
            ),
        }
        for s in found
    }


def relative_paths(server, library: Path) -> dict:
    found = server.graphql(SCENES)["findScenes"]["scenes"]
    return {s["id"]: sorted(str(Path(f["path"]).relative_to(library)) for f in s["files"]) for s in found}


def fresh_stash(factory, version, name, library):
    server = factory(version, name=name, install_plugin=False, stash=library_setting(library))
    server.stop()
    return server


def scan_log(server, since: int) -> str:
    return server.log_text()[since:]


@pytest.mark.parametrize("how", ["renamed", "copied"])
def test_a_moved_library_keeps_its_scenes_after_restore_with_map_path(
    stash_server_factory, stash_version, tmp_path, how
):
    old_library, new_library = tmp_path / "media" / "a", tmp_path / "data" / "library"
    make_videos(old_library)
    server = stash_server_factory(stash_version, install_plugin=False, stash=library_setting(old_library))
    server.scan(old_library)
    first = scenes(server)
    assert len(first) == len(VIDEOS)
    watched = sorted(first)[0]
    server.graphql("mutation($id: ID!) { sceneAddPlay(id: $id) { count } }", {"id": watched})
    server.graphql("mutation($id: ID!) { sceneAddO(id: $id) { count } }", {"id": watched})
    tag = server.graphql('mutation { tagCreate(input: {name: "moved-with-me"}) { id } }')["tagCreate"]["id"]
    server.graphql(
        "mutation($id: ID!, $t: [ID!]) { sceneUpdate(input: {id: $id, tag_ids: $t}) { id } }",
        {"id": watched, "t": [tag]},
    )
    before, paths_before = scenes(server), relative_paths(server, old_library)
    assert before[watched]["play_count"] == 1 and before[watched]["o_counter"] == 1
    result = run_cli("download", "--url", server.url, "--dest", str(tmp_path / "archive"), "--json")
    assert result.returncode == 0, result.stderr
    backup = tmp_path / "archive" / json.loads(result.stdout)["file"]
    server.stop()

    move_library(old_library, new_library, how)
    shutil.rmtree(tmp_path / "media")

    mapped = fresh_stash(stash_server_factory, stash_version, "stash-mapped", new_library)
    dry = run_restore(
        str(backup),
        "--config",
        str(mapped.config_path),
        "--dry-run",
        "--map-path",
        f"{tmp_path / 'media' / 'a'}={new_library}",
    )
    assert dry.returncode == 0, dry.stderr
    assert f"-> {new_library}: 3 folder(s), 4 file(s) ({new_library} exists here)" in dry.stdout + dry.stderr
    restored = run_restore(
        str(backup),
        "--config",
        str(mapped.config_path),
        "--yes",
        "--map-path",
        f"{tmp_path / 'media' / 'a'}={new_library}",
    )
    assert restored.returncode == 0, restored.stderr
    with sqlite3.connect(f"file:{mapped.database}?mode=ro", uri=True) as connection:
        folders = [row[0] for row in connection.execute("SELECT path FROM folders")]
    assert folders and all(f == str(new_library) or f.startswith(f"{new_library}/") for f in folders), folders
    mapped.start()
    clean(mapped)  # a Clean before the first scan finds every file where the database says
    assert scenes(mapped) == before
    log_start = len(mapped.log_text())
    mapped_seconds = mapped.scan(new_library)
    log = scan_log(mapped, log_start)
    assert "moved to" not in log and "Creating new" not in log, log  # the paths were right: nothing to re-link
    assert scenes(mapped) == before  # same ids, same files and fingerprints, play history, o-counter, tags
    assert relative_paths(mapped, new_library) == paths_before

    unmapped = fresh_stash(stash_server_factory, stash_version, "stash-unmapped", new_library)
    restored = run_restore(str(backup), "--config", str(unmapped.config_path), "--yes")
    assert restored.returncode == 0, restored.stderr
    unmapped.start()
    log_start = len(unmapped.log_text())
    unmapped_seconds = unmapped.scan(new_library)
    log = scan_log(unmapped, log_start)
    after_unmapped = scenes(unmapped)

    cleaned = fresh_stash(stash_server_factory, stash_version, "stash-unmapped-cleaned", new_library)
    assert run_restore(str(backup), "--config", str(cleaned.config_path), "--yes").returncode == 0
    cleaned.start()
    clean(cleaned)
    left_after_clean = len(scenes(cleaned))
    print(
        f"\n[{stash_version}, {how}] first scan after the move: {mapped_seconds:.2f} s with --map-path, "
        f"{unmapped_seconds:.2f} s without; without it: {len(after_unmapped)} scene(s), same as before: "
        f"{after_unmapped == before}; folder moves detected {log.count('moved to')}, files fingerprinted "
        f"{log.count('Calculating fingerprints')}, new scenes {log.count('Creating new scene')}; a Clean before "
        f"the first scan leaves {left_after_clean} of {len(before)} scene(s) without the mapping"
    )
