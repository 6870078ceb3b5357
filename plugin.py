"""What Stash runs for a task when this repository is the plugin folder: plugin.yml
beside it names it. An installed plugin runs its archive's __main__.py instead
(cli/install.py); both go through plugin/task.py, which finds gql (Stash's Python's
own, or `python-packages/` here) or answers the one-line fix."""

import sys

from stash_backup_plugin.plugin.task import main

sys.exit(main())
