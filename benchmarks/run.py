"""stash-backup benchmarks: our costs side by side with the reference tools.

    python benchmarks/run.py            # the full suite (sizes up to 4 GiB / 50k blobs)
    python benchmarks/run.py --quick    # small sizes, a few minutes: what CI runs
    python benchmarks/run.py --only download,verify --runs 5
    python benchmarks/run.py --only archive,memory,codec --archive-issue-scale   # 1 GiB, 50k blobs, 30 nights
    python benchmarks/run.py --only drill --runs 3                                # restore drill vs stash-restore
    python benchmarks/run.py --only pages                                         # page-level snapshots vs restic
    python benchmarks/run.py --only snapshot                                      # snapshot --offline vs .backup+rsync

Every figure is a median of alternating A/B runs with its spread; ratio = our time
divided by the reference's (lower is better).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import data  # noqa: E402
from benchmarks.harness import Comparison, compare, run_measured  # noqa: E402

PY = sys.executable
OURS = [PY, "-m", "benchmarks.ours"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
MiB, GiB = 1 << 20, 1 << 30
TARGETS = {"offsite first push": 1.1, "download": 1 / 0.95, "verify": 1.1, "pack": 1.2, "unpack": 1.2, "restore": 1.3}


def label(size: int) -> str:
    return f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"


def ensure_tools() -> None:
    missing = [tool for tool in ("curl", "zip", "unzip", "sqlite3", "tar", "time", "rsync") if not shutil.which(tool)]
    if missing:
        print(f"installing {', '.join(missing)} from Debian's packages", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, capture_output=True)


def fileserver(root: Path) -> tuple[subprocess.Popen, int]:
    binary = data.CACHE / "fileserver"
    if not binary.exists():
        subprocess.run(
            ["go", "build", "-o", str(binary), "."],
            cwd=Path(__file__).parent / "fileserver",
            check=True,
            capture_output=True,
        )
    process = subprocess.Popen([str(binary), str(root)], stdout=subprocess.PIPE, text=True)
    return process, int(process.stdout.readline())


# --- 1. download ------------------------------------------------------------------------


def bench_download(sizes, runs, work: Path) -> list[Comparison]:
    """Into memory (/dev/shm): the clients' own cost, no disk. Onto disk: with an
    fsync on both sides, since ours makes the file durable and curl alone does not."""
    results = []
    served = work / "served"
    served.mkdir()
    server, port = fileserver(served)
    memory = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    try:
        for size in sizes:
            name = f"stash-go.sqlite.75.20260101_{size % 1000000:06d}"
            (served / name).unlink(missing_ok=True)
            os.link(data.random_file(size), served / name)
            url = f"http://127.0.0.1:{port}/{name}"
            for where, out, reference_name, reference in _download_targets(work, memory, name, url):

                def reset(out=out):
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()

                results.append(
                    compare(
                        f"download to {where} (file server)",
                        label(size),
                        reference_name,
                        reference,
                        lambda out=out: run_measured(OURS + ["fetch", url, str(out)], env=ENV),
                        runs,
                        reset,
                        payload_bytes=size,
                    )
                )
                shutil.rmtree(out, ignore_errors=True)
    finally:
        server.kill()
    return results


def _download_targets(work: Path, memory, name: str, url: str):
    if memory:
        out = memory / f"stash-backup-bench-{os.getpid()}"
        yield "memory", out, "curl", lambda: run_measured(["curl", "-sf", "-o", str(out / name), url])
    disk = work / "out"
    yield (
        "disk",
        disk,
        "curl+fsync",
        lambda: run_measured(["sh", "-c", f"curl -sf -o '{disk / name}' '{url}' && sync '{disk / name}'"]),
    )


def bench_download_from_stash(size, runs, work: Path) -> Comparison:
    """The real /downloads endpoint: one fresh backup link per trial, both clients
    fetch it inside its 30 s window."""
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    stash = StashServer(build(NEW_VERSION), work / "stash", NEW_VERSION, blobs_storage="DATABASE")
    stash.start()
    stash.stop()
    import sqlite3

    connection = sqlite3.connect(stash.database)
    connection.execute("CREATE TABLE bench_ballast (data blob)")
    for _ in range(max(1, size // (8 * MiB))):
        connection.execute("INSERT INTO bench_ballast VALUES (?)", (os.urandom(8 * MiB),))
    connection.commit()
    connection.close()
    stash.start()
    out = work / "stash-out"
    result = Comparison("download (real Stash /downloads)", label(size), reference_name="curl+fsync")
    try:
        for trial in range(runs):
            link = stash.graphql("mutation { backupDatabase(input: {download: true}) }")["backupDatabase"]
            name = link.rsplit("/", 1)[1]
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            copy = out / ("c-" + name)
            order = [
                ("reference", lambda: run_measured(["sh", "-c", f"curl -sf -o '{copy}' '{link}' && sync '{copy}'"])),
                ("ours", lambda: run_measured(OURS + ["fetch", link, str(out)], env=ENV)),
            ]
            for which, action in order if trial % 2 == 0 else order[::-1]:
                getattr(result, which).append(action())
        result.payload_bytes = (out / name).stat().st_size
    finally:
        stash.stop()
    print(result.row(), flush=True)
    return result


# --- 2. verification -----------------------------------------------------------------------


def bench_verify(sizes, runs, full_sizes) -> list[Comparison]:
    results = []
    for size in sizes:
        database = data.stash_shaped_database(size)
        results.append(
            compare(
                "verify quick_check",
                label(size),
                "sqlite3",
                lambda: run_measured(["sqlite3", str(database), "PRAGMA quick_check"]),
                lambda: run_measured(OURS + ["verify", str(database), "quick"], env=ENV),
                runs,
            )
        )
        if size in full_sizes:
            results.append(
                compare(
                    "verify integrity_check (full)",
                    label(size),
                    "sqlite3",
                    lambda: run_measured(["sqlite3", str(database), "PRAGMA integrity_check"]),
                    lambda: run_measured(OURS + ["verify", str(database), "full"], env=ENV),
                    max(1, runs // 2),
                )
            )
    return results


# --- 3. blob packing and unpacking -------------------------------------------------------------


def bench_blobs(counts, runs, work: Path) -> list[Comparison]:
    results = []
    database = data.stash_shaped_database(16 * MiB)
    for count in counts:
        blobs = data.blob_folder(count)
        total = data.folder_bytes(blobs)
        tag = f"{count // 1000}k blobs"
        zip_ref, zip_ours, tar_ref = work / "ref.zip", work / "ours.zip", work / "ref.tar"

        def clean_outputs():
            for path in (zip_ref, zip_ours, tar_ref):
                path.unlink(missing_ok=True)

        results.append(
            compare(
                f"pack blobs ({label(total)})",
                tag,
                "zip -0",
                lambda: run_measured(
                    ["zip", "-r", "-0", "-q", str(zip_ref), blobs.name, "-x", "*/.complete"], cwd=str(blobs.parent)
                ),
                lambda: run_measured(OURS + ["pack", str(blobs), str(database), str(zip_ours)], env=ENV),
                runs,
                clean_outputs,
                payload_bytes=total,
            )
        )
        results.append(
            compare(
                f"pack blobs ({label(total)})",
                tag,
                "tar",
                lambda: run_measured(["tar", "cf", str(tar_ref), "-C", str(blobs.parent), blobs.name]),
                lambda: run_measured(OURS + ["pack", str(blobs), str(database), str(zip_ours)], env=ENV),
                runs,
                clean_outputs,
                payload_bytes=total,
            )
        )
        run_measured(OURS + ["pack", str(blobs), str(database), str(zip_ours)], env=ENV)
        run_measured(["tar", "cf", str(tar_ref), "-C", str(blobs.parent), blobs.name])
        target = work / "unpacked"

        def clean_target():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()

        results.append(
            compare(
                f"unpack blobs ({label(total)})",
                tag,
                "unzip",
                lambda: run_measured(["unzip", "-q", str(zip_ours), "-d", str(target)]),
                lambda: run_measured(OURS + ["unpack", str(zip_ours), str(target / "blobs")], env=ENV),
                runs,
                clean_target,
                payload_bytes=total,
            )
        )
        results.append(
            compare(
                f"unpack blobs ({label(total)})",
                tag,
                "unzip+sync",
                lambda: run_measured(["sh", "-c", f"unzip -q '{zip_ours}' -d '{target}' && sync"]),
                lambda: run_measured(OURS + ["unpack", str(zip_ours), str(target / "blobs")], env=ENV),
                runs,
                clean_target,
                payload_bytes=total,
            )
        )
        results.append(
            compare(
                f"unpack blobs ({label(total)})",
                tag,
                "tar x",
                lambda: run_measured(["tar", "xf", str(tar_ref), "-C", str(target)]),
                lambda: run_measured(OURS + ["unpack", str(zip_ours), str(target / "blobs")], env=ENV),
                runs,
                clean_target,
                payload_bytes=total,
            )
        )
        clean_outputs()
        shutil.rmtree(target, ignore_errors=True)
    return results


# --- 4. restore ------------------------------------------------------------------------------------


def bench_restore(sizes, runs, work: Path) -> list[Comparison]:
    results = []
    for size in sizes:
        backup = data.stash_shaped_database(size)
        place = work / "restore"
        current = place / "stash-go.sqlite"
        copy = work / "cp-target.sqlite"

        config = place / "config.yml"

        def reset():
            shutil.rmtree(place, ignore_errors=True)
            place.mkdir()
            data_small = data.stash_shaped_database(16 * MiB)
            shutil.copyfile(data_small, current)
            # its own config: Stash servers of other benchmarks or tests are other instances
            config.write_text(f"database: {current}\nport: 1\n")
            copy.unlink(missing_ok=True)

        ours = [PY, "-m", "stash_backup_plugin.offline", str(backup), "--config", str(config), "--yes"]
        results.append(
            compare(
                "restore (verify, swap)",
                label(size),
                "cp+quick_check",
                lambda: run_measured(
                    ["sh", "-c", f"cp '{backup}' '{copy}' && sqlite3 '{copy}' 'PRAGMA quick_check' >/dev/null"]
                ),
                lambda: run_measured(ours, env=ENV),
                runs,
                reset,
                payload_bytes=size,
            )
        )
        results.append(
            compare(
                "restore (verify, swap)",
                label(size),
                "cp+quick_check+sync",
                lambda: run_measured(
                    [
                        "sh",
                        "-c",
                        f"cp '{backup}' '{copy}' && sync '{copy}' && sqlite3 '{copy}' 'PRAGMA quick_check' >/dev/null",
                    ]
                ),
                lambda: run_measured(ours, env=ENV),
                runs,
                reset,
                payload_bytes=size,
            )
        )
        results.append(
            compare(
                "restore (verify, swap)",
                label(size),
                "cp",
                lambda: run_measured(["cp", str(backup), str(copy)]),
                lambda: run_measured(ours, env=ENV),
                runs,
                reset,
                payload_bytes=size,
            )
        )
        shutil.rmtree(place, ignore_errors=True)
        copy.unlink(missing_ok=True)
    return results


# --- 5. plugin overhead -----------------------------------------------------------------------------


def bench_plugin(runs, work: Path) -> None:
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer, seed_content

    stash = StashServer(build(NEW_VERSION), work / "plugin-stash", NEW_VERSION)
    stash.start()
    try:
        seed_content(stash)
        subprocess.run(
            [
                PY,
                "-m",
                "stash_backup_plugin",
                "install-plugin",
                "--plugins-dir",
                str(stash.plugins),
                "--url",
                stash.url,
            ],
            env=ENV,
            check=True,
            capture_output=True,
        )
        bare, task = [], []
        for _ in range(runs):
            started = time.perf_counter()
            stash.graphql("mutation { backupDatabase(input: {download: false, includeBlobs: true}) }")
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            job = _run_task_fast(stash, "Backup database")
            task.append(time.perf_counter() - started)
            assert job["status"] == "FINISHED"
        imports = [
            run_measured([PY, "-c", "import stash_backup_plugin.plugin.run"], env=ENV).seconds for _ in range(runs)
        ]
        bare_python = [run_measured([PY, "-c", "pass"]).seconds for _ in range(runs)]
    finally:
        stash.stop()
    import statistics as st

    overhead = st.median(task) - st.median(bare)
    print(
        f"{'plugin Backup task vs bare mutation':<34} {'':>9}  task {st.median(task):.3f}s ({min(task):.3f}–{max(task):.3f})  "
        f"bare {st.median(bare):.3f}s ({min(bare):.3f}–{max(bare):.3f})  overhead {overhead:.3f}s "
        f"[target <= 0.5 s: {'met' if overhead <= 0.5 else 'MISSED'}]"
    )
    print(
        f"{'cold import of the plugin entry':<34} {'':>9}  {st.median(imports):.3f}s vs bare python "
        f"{st.median(bare_python):.3f}s: +{st.median(imports) - st.median(bare_python):.3f}s"
    )


def _run_task_fast(stash, task):
    job_id = stash.graphql(
        'mutation($t: String!) { runPluginTask(plugin_id: "stash-backup", task_name: $t) }', {"t": task}
    )["runPluginTask"]
    while True:
        job = stash.graphql("query($id: ID!) { findJob(input: {id: $id}) { status } }", {"id": job_id})["findJob"]
        if job is None or job["status"] in ("FINISHED", "FAILED", "CANCELLED"):
            return job or {"status": "FINISHED"}
        time.sleep(0.01)


def bench_plugin_cold_start(runs, work: Path) -> None:
    """Stash starts a new Python for every task: the time from runPluginTask to the
    plugin's first log line (an empty archive's Verify, which logs once after reading
    its settings), with gql from the plugin's bundle (Stash's python_path a venv
    holding only requests, as its Docker image offers) against gql installed in
    Stash's Python, alternating; and the size of what is installed."""
    import statistics as st
    from tests.support.python_envs import RUNNER, make_venv, python_for
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    other = "3.12" if RUNNER != "3.12" else "3.11"
    pythons = {
        "bundled gql (venv with only requests)": make_venv(work / "requests-only", PY, ("requests",)),
        "installed gql (Stash's Python has it)": PY,
        f"bundled gql, built on {RUNNER}, run by {other} (no byte code)": make_venv(
            work / "requests-only-other", python_for(other), ("requests",)
        ),
    }
    stash = StashServer(build(NEW_VERSION), work / "cold-start-stash", NEW_VERSION)
    stash.start()
    try:
        subprocess.run(
            [
                PY,
                "-m",
                "stash_backup_plugin",
                "install-plugin",
                "--plugins-dir",
                str(stash.plugins),
                "--url",
                stash.url,
            ],
            env=ENV,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [PY, "-m", "stash_backup_plugin", "package", "--output", str(work / "plugin-source")],
            env=ENV,
            check=True,
            capture_output=True,
        )
        seconds = {name: [] for name in pythons}
        for trial in range(runs):
            for name, python in list(pythons.items())[::-1] if trial % 2 else pythons.items():
                stash.graphql(
                    "mutation($p: String) { configureGeneral(input: {pythonPath: $p}) { pythonPath } }", {"p": python}
                )
                seconds[name].append(_seconds_to_first_log_line(stash, "Verify archive"))
    finally:
        stash.stop()
    for name, values in seconds.items():
        print(f"{'task cold start, ' + name:<66} {st.median(values):.3f}s ({min(values):.3f}–{max(values):.3f})")
    installed = sum(p.stat().st_size for p in (stash.plugins / "stash-backup").iterdir())
    package = (work / "plugin-source" / "stash-backup.zip").stat().st_size
    print(f"{'installed plugin folder (manifest + archive)':<66} {installed / MiB:.2f} MiB")
    print(f"{'plugin-manager package zip':<66} {package / MiB:.2f} MiB", flush=True)


def _seconds_to_first_log_line(stash, task: str) -> float:
    def ours():
        return [line for line in stash.logs() if "[Plugin / Stash Backup]" in line["message"]]

    for _ in range(3):
        # Stash keeps only its latest log lines: tell the new ones by what was there.
        seen = {(line["time"], line["message"]) for line in ours()}
        started = time.time()
        job = _run_task_fast(stash, task)
        assert job["status"] == "FINISHED", job
        # Stash ends the job without waiting for the plugin's stderr to be read, so
        # the line can come a little later, or (rarely, under load) never.
        deadline = time.monotonic() + 3
        while (
            not (new := [line for line in ours() if (line["time"], line["message"]) not in seen])
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        if new:
            assert not any(line["level"] == "Error" for line in new), new
            return min(_epoch(line["time"]) for line in new) - started
    raise RuntimeError(f"Stash logged no line of the plugin's {task!r} task three times")


def _epoch(stamp: str) -> float:
    """Stash's log times are RFC 3339 with nanoseconds, which datetime does not parse."""
    whole, fraction, zone = re.match(r"(.*?T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp).groups()
    moment = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return moment.timestamp() + float("0." + (fraction or "0"))


# --- 6. start-up of the commands: benchmarks/startup.py -------------------------------------

from benchmarks.startup import bench_startup  # noqa: E402


# --- driver -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument(
        "--only",
        default="download,stash,verify,blobs,restore,plugin,coldstart,startup,codec,archive,memory,offsite,drill,"
        "pathmap,checklive,snapshot,pages",
    )
    parser.add_argument(
        "--archive-issue-scale",
        action="store_true",
        help="the archive and drill benchmarks at the issues' size: 1 GiB database, 50k blobs (30 nights)",
    )
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--large", action="store_true", help="add 4 GiB databases and 100k blobs (slow to generate)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.quick:
        plan = dict(
            download=[32 * MiB],
            stash=32 * MiB,
            verify=[16 * MiB],
            full=[16 * MiB],
            blobs=[1000],
            restore=[16 * MiB],
            runs=args.runs or 3,
            codec=(16 * MiB, 300),
            archive=(16 * MiB, 300, 3),
            memory=[1000, 5000],
            offsite=[(16 * MiB, 300)],
            drill=(16 * MiB, 300),
            pages=(16 * MiB, 300, 3),
        )
    else:
        plan = dict(
            download=[100 * MiB, GiB, 4 * GiB],
            stash=GiB,
            verify=[100 * MiB, GiB],
            full=[100 * MiB],
            blobs=[5000, 50000],
            restore=[100 * MiB, GiB],
            runs=args.runs or 5,
            codec=(256 * MiB, 10000),
            archive=(256 * MiB, 10000, 10),
            memory=[10000, 100000],
            offsite=[(64 * MiB, 2000), (256 * MiB, 10000)],
            drill=(256 * MiB, 10000),
            pages=(166 * MiB, 4000, 5),
        )
        if args.large:
            plan["verify"].append(4 * GiB)
            plan["restore"].append(4 * GiB)
            plan["blobs"].append(100000)
    if args.archive_issue_scale:
        plan["archive"], plan["codec"], plan["drill"] = (GiB, 50000, 30), (GiB, 50000), (GiB, 50000)
        plan["pages"] = (GiB, 50000, 30)
    ensure_tools()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{subprocess.run(['sqlite3', '--version'], capture_output=True, text=True).stdout.split()[0]} (sqlite3), "
        f"{subprocess.run(['curl', '--version'], capture_output=True, text=True).stdout.split()[1]} (curl)"
    )
    print(f"runs per figure: {plan['runs']} (alternating A/B); ratio = ours / reference time\n", flush=True)
    results: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="bench-", dir=_work_parent()) as folder:
        work = Path(folder)
        if "download" in only:
            results += bench_download(plan["download"], plan["runs"], work)
        if "stash" in only:
            results.append(bench_download_from_stash(plan["stash"], plan["runs"], work))
        if "verify" in only:
            results += bench_verify(plan["verify"], plan["runs"], plan["full"])
        if "blobs" in only:
            results += bench_blobs(plan["blobs"], plan["runs"], work)
        if "restore" in only:
            results += bench_restore(plan["restore"], plan["runs"], work)
        if "plugin" in only:
            bench_plugin(plan["runs"], work)
        if "coldstart" in only:
            bench_plugin_cold_start(max(plan["runs"], 5), work)
        if "startup" in only:
            bench_startup(max(plan["runs"], 5), work)
        if "pathmap" in only:
            from benchmarks.pathmap import bench_pathmap

            print("\nstash-restore --map-path:", flush=True)
            bench_pathmap(20_000 if args.quick else 200_000, max(1, min(plan["runs"], 3)))
        if "checklive" in only:
            from benchmarks.check_live import bench_check_live

            print("\ncheck-live on a database in WAL mode held open by a writer:", flush=True)
            results.append(bench_check_live(16 * MiB if args.quick else GiB, plan["runs"]))
        if "snapshot" in only:
            from benchmarks.snapshot import bench_snapshot

            print("\nsnapshot --offline of an unchanged stopped Stash:", flush=True)
            snapshot, parts = bench_snapshot(
                *((16 * MiB, 300) if args.quick else (GiB, 50000)),
                max(1, min(plan["runs"], 3)),
                own_folder(work, "snapshot"),
            )
            results.append(snapshot)
            print("\n".join(parts), flush=True)
        if "offsite" in only:
            from benchmarks.offsite import bench_offsite

            print("\noff-site copies to SeaweedFS's S3 on 127.0.0.1:", flush=True)
            results += bench_offsite(plan["offsite"], min(plan["runs"], 3), work)
        archive_lines = _archive_benchmarks(only, plan, work)
    _summary(results, args.quick)
    if archive_lines:
        print("\nthe archive's store:")
        for line in archive_lines:
            print(line)
    return 0


def own_folder(work: Path, name: str) -> Path:
    """A folder of the run's work folder for one benchmark alone: two that both made
    `work/reference` or `work/stash` collided (FileExistsError)."""
    folder = work / name
    folder.mkdir()
    return folder


def _archive_benchmarks(only: set, plan: dict, work: Path) -> list[str]:
    """The store: codecs, N nights against curl + rsync, memory as blobs grow."""
    from benchmarks import archive, compression, library

    lines = []
    if "codec" in only:
        size, blobs = plan["codec"]
        lib = library.library(size, blobs)
        print(f"\ncodecs on a Stash-shaped database ({lib.database.stat().st_size // MiB} MiB):", flush=True)
        lines.append(
            f"codecs ({lib.database.stat().st_size // MiB} MiB Stash-shaped database): size, compress, decompress"
        )
        for name, ratio, comp, decomp in compression.measure(lib.database, max(1, plan["runs"] // 2)):
            row = f"  {name:<28} {ratio * 100:5.1f} %  {comp:6.0f} MiB/s  {decomp:6.0f} MiB/s"
            print(row, flush=True)
            lines.append(row)
    if "archive" in only:
        size, blobs, nights = plan["archive"]
        print(f"\narchive: {nights} nights of a {size // MiB} MiB library with {blobs} blobs", flush=True)
        result = archive.bench_nights(size, blobs, nights, own_folder(work, "nights"))
        lines += archive.report(result, size, blobs)
    if "memory" in only:
        print("\npeak memory as blobs grow:", flush=True)
        lines += ["peak memory as blobs grow:"] + archive.bench_memory(plan["memory"], work)
    if "drill" in only:
        from benchmarks import drill

        size, blobs = plan["drill"]
        print(f"\nrestore drill of a {size // MiB} MiB library with {blobs} blobs", flush=True)
        lines += drill.bench_drill(size, blobs, min(plan["runs"], 3), work)
    if "pages" in only:
        from benchmarks import pages

        size, blobs, nights = plan["pages"]
        print(
            f"\npage-level snapshots (prototype) vs restic: {nights} nights of a {size // MiB} MiB library with "
            f"{blobs} blobs",
            flush=True,
        )
        lines += pages.report(pages.bench_pages(size, blobs, nights, own_folder(work, "pages")))
        lines += pages.bench_live_copies(size, blobs, nights, own_folder(work, "live-copies"))
    return lines


def _work_parent() -> str:
    data.CACHE.mkdir(parents=True, exist_ok=True)
    return str(data.CACHE)


def _summary(results: list[Comparison], quick: bool) -> None:
    print(
        "\ntargets:"
        + (
            " (quick sizes: a fixed ~0.1-0.2 s Python start-up dominates; the targets are for the "
            "full sizes, see the README)"
            if quick
            else ""
        )
    )
    for result in results:
        key = next((k for k in TARGETS if result.name.startswith(k)), None)
        if (
            key is None
            or "full" in result.name
            or result.reference_name in ("tar", "tar x", "unzip+sync", "cp", "cp+quick_check+sync")
        ):
            continue
        met = result.ratio <= TARGETS[key]
        print(
            f"  {result.name} {result.size_label} vs {result.reference_name}: {result.ratio:.2f}x "
            f"(target <= {TARGETS[key]:.2f}x) {'met' if met else 'MISSED'}"
        )
    rss = [
        (r.name, r.size_label, max(s.max_rss for s in r.ours) / MiB) for r in results if r.name.startswith("download")
    ]
    for name, size, peak in rss:
        print(f"  {name} {size}: peak RSS {peak:.1f} MiB (target <= 64 MiB) {'met' if peak <= 64 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
