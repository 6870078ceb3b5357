"""Entry point that Stash runs for every task: `python {pluginDir}/stash_backup_plugin/plugin/task.py`.

Kept free of third-party imports so that a Python without `gql`/`requests` gets one
clear error with the exact pip command, instead of a traceback."""
import json
import os
import sys

REQUIRED = (("gql", "gql[requests]"), ("requests", "requests"), ("yaml", "PyYAML"))


def _missing_packages():
    import importlib.util
    return [package for module, package in REQUIRED if importlib.util.find_spec(module) is None]


def _fail(message):
    # Answered once, as the error: Stash logs it at error level ("Plugin returned error").
    sys.stdout.write(json.dumps({"output": None, "error": message}))
    return 0


def main():
    # Python put this script's own folder first on sys.path, where our module names
    # would be importable bare; the plugin folder (above the package) goes there.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(os.path.dirname(here)))
    missing = _missing_packages()
    if missing:
        command = '"%s" -m pip install %s' % (sys.executable, " ".join("'%s'" % p for p in missing))
        return _fail("stash-backup needs Python packages that Stash's Python (%s) lacks: %s. Install them with: %s"
                     % (sys.executable, ", ".join(missing), command))
    from stash_backup_plugin.plugin.run import main as plugin_main
    return plugin_main()


if __name__ == "__main__":
    sys.exit(main())
