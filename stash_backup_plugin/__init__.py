"""stash-backup: verified backups of a Stash server, with retention and an offline restore."""

__version__ = "0.1.0"
DEFAULT_PLUGIN_ID = "stash-backup"  # the manifest's name when installed as is; users may choose another

# The installed plugin's layout, shared by the installer (cli) and the entry (plugin).
# A plugin folder holds files only: Stash's plugin manager removes the files it listed
# and then the folder without recursing, so any subfolder would outlive an uninstall.
PLUGIN_ARCHIVE = "stash_backup_plugin.pyz"  # our modules and the bundled gql, run by Python as a zip
BUNDLE_FOLDER = "_vendor"  # inside the archive: gql and its pure-Python dependencies
BUNDLE_RECORD = "bundle.json"  # inside the archive: what was bundled, from which Python
LOCAL_PACKAGES = "python-packages"  # in the plugin folder: where a user may `pip install --target`
