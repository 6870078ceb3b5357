"""stash-backup: verified backups of a Stash server, with retention and an offline restore."""

__version__ = "0.1.0"
