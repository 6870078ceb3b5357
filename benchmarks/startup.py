"""Start-up: what each command that talks to no server, and the plugin's task entry,
costs over a bare Python start (`python -c pass`), run side by side.

    python benchmarks/startup.py               # 11 alternating runs of each pair
    python benchmarks/startup.py --runs 21

Each row is the median of N runs of `python -c pass` and of the command, alternating
which goes first (benchmarks/harness.py). Budgets: +0.1 s for a command that talks to
no server; +0.3 s for the plugin's task entry, measured as the installed plugin's
archive run by this Python with no task input: it imports everything a task imports
(requests, gql, our jobs layer), then answers that it expects Stash's input.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.harness import Comparison, compare, run_measured  # noqa: E402

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
    plugins = work / "plugins"
    plugins.mkdir()
    run_measured(backup + ["install-plugin", "--plugins-dir", str(plugins)], env=ENV)
    return {
        "stash-backup --help": (backup + ["--help"], COMMAND_BUDGET),
        "stash-backup list": (backup + ["list", "--dest", str(archive)], COMMAND_BUDGET),
        "stash-backup verify": (backup + ["verify", "--dest", str(archive)], COMMAND_BUDGET),
        "stash-backup prune": (backup + ["prune", "--dest", str(archive), "--keep-last", "1"], COMMAND_BUDGET),
        "stash-restore --help": (restore + ["--help"], COMMAND_BUDGET),
        "stash-restore --list": (restore + ["--list", "--config", str(config)], COMMAND_BUDGET),
        "plugin task entry (installed archive)": ([PY, str(plugins / "stash-backup" / "stash_backup_plugin.pyz")],
                                                  TASK_BUDGET),
    }


def bench_startup(runs: int, work: Path) -> list[Comparison]:
    results = []
    for name, (command, budget) in commands(work).items():
        result = compare(f"start-up {name}", "", "python -c pass", lambda: run_measured([PY, "-c", "pass"], env=ENV),
                         lambda command=command: run_measured(command, env=ENV), runs)
        extra = result._median(result.ours) - result._median(result.reference)
        print(f"  {name}: +{extra:.3f} s over a bare Python start, {result.ratio:.2f}x "
              f"[target <= +{budget} s: {'met' if extra <= budget else 'MISSED'}]", flush=True)
        results.append(result)
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
