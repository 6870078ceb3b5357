"""`python -m stash_backup_plugin.offline`: stash-restore without the installed script."""

import sys

from .cli import main

sys.exit(main())
