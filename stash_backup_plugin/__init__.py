"""stash-backup: verified backups of a Stash server, with retention and an offline restore."""

__version__ = "0.1.0"
DEFAULT_PLUGIN_ID = "stash-backup"  # the manifest's name when installed as is; users may choose another
