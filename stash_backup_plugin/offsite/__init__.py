"""Off-site copies of the archive through rclone: push, verify, retention and
garbage collection on the remote, pull of one backup back into a local archive.
Standard library only; rclone runs as a subprocess (rclone.py)."""
