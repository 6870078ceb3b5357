"""stash-restore, the offline restore: standard library and PyYAML only."""
