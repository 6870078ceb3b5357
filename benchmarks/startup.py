"""Start-up: what each command that talks to no server, and the plugin's task entry,
costs over a bare Python start (`python -c pass`), run side by side.

    python benchmarks/startup.py               # 11 alternating runs of each pair
    python benchmarks/startup.py --runs 21

Each row is the median of N runs of `python -c pass` and of the command, alternating
which goes first: wall time, the budget's measure, and CPU time (user + system of the
child), which a loaded machine stretches far less. Budgets: +0.1 s for a command that
talks to no server; +0.3 s for the plugin's task entry, measured as the installed
plugin's archive run by this Python with no task input: it imports everything a task
imports (requests, gql, our jobs layer), then answers that it expects Stash's input.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO))
COMMAND_BUDGET = 0.1  # seconds over a bare Python start: a command that talks to no server
TASK_BUDGET = 0.3  # the plugin's task entry


def commands(work: Path) -> dict[str, tuple[list[str], float]]:
    """Name -> (command, budget). `work` receives an empty archive, a Stash config and
    the installed plugin."""
    archive, config = work / "startup-archive", work / "startup-stash" / "config.yml"
    archive.mkdir()
    config.parent.mkdir()
    config.write_text(f"database: {config.parent / 'stash-go.sqlite'}\nport: 1\n")
    backup = [PY, "-m", "stash_backup_plugin"]
    restore = [PY, "-m", "stash_backup_plugin.offline"]
    plugins = work / "startup-plugins"
    plugins.mkdir()
    subprocess.run(backup + ["install-plugin", "--plugins-dir", str(plugins)], env=ENV, check=True, capture_output=True)
    return {
        "stash-backup --help": (backup + ["--help"], COMMAND_BUDGET),
        "stash-backup list": (backup + ["list", "--dest", str(archive)], COMMAND_BUDGET),
        "stash-backup verify": (backup + ["verify", "--dest", str(archive)], COMMAND_BUDGET),
        "stash-backup prune": (backup + ["prune", "--dest", str(archive), "--keep-last", "1"], COMMAND_BUDGET),
        "stash-restore --help": (restore + ["--help"], COMMAND_BUDGET),
        "stash-restore --list": (restore + ["--list", "--config", str(config)], COMMAND_BUDGET),
        "plugin task entry (installed archive)": (
            [PY, str(plugins / "stash-backup" / "stash_backup_plugin.pyz")],
            TASK_BUDGET,
        ),
    }


def measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run, its output discarded."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(
        command, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode()[-800:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def side_by_side(command: list[str], runs: int) -> dict[str, tuple[float, float]]:
    """Medians of (wall, CPU) for the bare start and the command, alternating which goes first."""
    samples = {"bare": [], "ours": []}
    for trial in range(runs):
        order = [("bare", [PY, "-c", "pass"]), ("ours", command)]
        for which, argv in order[::-1] if trial % 2 else order:
            samples[which].append(measured(argv))
    return {
        which: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for which, values in samples.items()
    }


def bench_startup(runs: int, work: Path) -> dict[str, dict]:
    results = {}
    for name, (command, budget) in commands(work).items():
        medians = results[name] = side_by_side(command, runs)
        (bare_wall, bare_cpu), (wall, cpu) = medians["bare"], medians["ours"]
        extra = wall - bare_wall
        print(
            f"start-up {name:<40} wall {wall:.3f}s (bare {bare_wall:.3f}s) +{extra:.3f}s {wall / bare_wall:.2f}x"
            f"  CPU {cpu:.3f}s (bare {bare_cpu:.3f}s) +{cpu - bare_cpu:.3f}s"
            f"  [target <= +{budget} s: {'met' if extra <= budget else 'MISSED'}]",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as work:
        bench_startup(args.runs, Path(work))
    print(f"load average {os.getloadavg()[0]:.1f} (a loaded machine stretches every figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
