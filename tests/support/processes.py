"""Process ids for tests of what a killed run left behind."""

import os


def gone_pid() -> int:
    """A pid no process has here now (near the top of the range: not soon reused)."""
    pid = int(open("/proc/sys/kernel/pid_max").read()) - 10
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid
