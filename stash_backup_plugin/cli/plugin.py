"""The commands that put the plugin into Stash: install-plugin, package (the work is in
cli/install.py, imported when a command runs)."""

from __future__ import annotations

from pathlib import Path

from .. import DEFAULT_PLUGIN_ID
from ..core.errors import StashBackupError
from .options import open_client


def add_commands(commands) -> None:
    install = commands.add_parser("install-plugin", help="install the plugin into Stash's plugins folder")
    install.add_argument("--plugins-dir", type=Path, required=True, help="Stash's plugins folder")
    install.add_argument("--id", default=DEFAULT_PLUGIN_ID, help="plugin ID (the manifest's name)")
    package = commands.add_parser("package", help="build a plugin-manager source: <id>.zip and index.yml")
    package.add_argument("--output", type=Path, default=Path("dist/plugin-source"))
    package.add_argument("--id", default=DEFAULT_PLUGIN_ID)


def cmd_install_plugin(args, report) -> int:
    from .install import install_plugin

    target = install_plugin(args.plugins_dir.expanduser(), args.id)
    report.info(f"installed the plugin into {target}")
    try:
        with open_client(args) as client:
            client.reload_plugins()
        report.info(f"Stash at {args.url} reloaded its plugins: see Settings > Tasks")
    except StashBackupError as error:
        report.info(f"Stash was not reloaded ({error}); use Settings > Plugins > Reload plugins")
    return 0


def cmd_package(args, report) -> int:
    from .install import build_package

    zip_path, index_path = build_package(args.output, args.id)
    # Stash takes a source as a URL: a plain path is refused ("unsupported protocol scheme").
    report.info(
        f"built {zip_path} and {index_path}: in Stash, Settings > Plugins > Available Plugins > Add Source "
        f"with the URL {index_path.resolve().as_uri()}"
    )
    return 0


COMMANDS = {"install-plugin": cmd_install_plugin, "package": cmd_package}
