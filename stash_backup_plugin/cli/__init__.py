"""stash-backup, the command line: commands, install-plugin and package."""
