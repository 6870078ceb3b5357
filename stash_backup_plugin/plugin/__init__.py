"""The Stash plugin: the entry Stash runs (task.py, no third-party imports), its protocol, the tasks."""
