"""The entry Stash runs for every task: `python {pluginDir}/stash_backup_plugin.pyz`
runs this through the archive's __main__.py; in a clone of the repository (plugin.yml
at its top), `python {pluginDir}/plugin.py` runs it from the package folder beside it.

Standard library only: whatever Stash's Python lacks ends in one error line with the
exact fix for that environment, never in a traceback. It decides where imports come
from, in this order:

1. the archive itself: our modules;
2. `<plugin>/python-packages`, when someone ran the fix printed here (pip --target):
   inside the plugin folder it survives re-creating a container;
3. the archive's bundle (gql and its pure-Python dependencies, taken by the installer
   from its own Python), only when neither the above nor Stash's Python has gql (a
   clone has no bundle: there the fix names python-packages). It
   then goes before site-packages: gql runs with the very dependencies it was
   installed with, never half with a system copy of another version (gql pins
   graphql-core tightly). A gql that Stash's Python has is never shadowed;
4. Stash's Python's own paths: `requests` comes from there.
"""

import importlib
import importlib.util
import json
import os
import sys

from .. import BUNDLE_FOLDER, BUNDLE_RECORD, LOCAL_PACKAGES  # the package root imports nothing

GQL_REQUIREMENT = "gql[requests]>=3.5"
# What the plugin's modules import from outside the standard library, in the order
# that tells what is wrong: requests is Stash's Python's own, gql ours or its.
NEEDED = (("requests", "requests"), ("gql", GQL_REQUIREMENT), ("gql.transport.requests", GQL_REQUIREMENT))


def _fail(message):
    # Answered once, as the error: Stash logs it at error level ("Plugin returned error").
    sys.stdout.write(json.dumps({"output": None, "error": message}))
    return 0


def arrange_path(root, plugin_dir):
    """sys.path as the module docstring orders it. Returns the bundle's path when it
    is used, else None."""
    rest = [p for p in sys.path if os.path.abspath(p or ".") != root]
    local = os.path.join(plugin_dir, LOCAL_PACKAGES)
    front = [root] + ([local] if os.path.isdir(local) else [])
    sys.path[:] = front + rest
    if importlib.util.find_spec("gql") is not None or os.path.isdir(root):  # a clone: no bundle
        return None
    bundle = os.path.join(root, BUNDLE_FOLDER)
    sys.path.insert(len(front), bundle)
    return bundle


def import_problem():
    """(module, requirement, error) for the first needed module that does not import."""
    for module, requirement in NEEDED:
        try:
            importlib.import_module(module)
        except Exception as error:  # a version mismatch can raise anything at import
            return module, requirement, error
    return None


def bundle_record(root):
    """What the installer bundled: {"python": "3.11.7", "distributions": {"gql": "4.4.0", ...}}."""
    import zipfile

    try:
        if os.path.isdir(root):
            with open(os.path.join(root, BUNDLE_RECORD), "rb") as handle:
                return json.loads(handle.read())
        with zipfile.ZipFile(root) as archive:
            return json.loads(archive.read(BUNDLE_RECORD))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}


def externally_managed():
    """PEP 668: pip refuses to install into this Python (Alpine's, Debian's, Ubuntu's)."""
    import sysconfig

    if sys.prefix != sys.base_prefix:  # a virtualenv is never externally managed
        return False
    return os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))


def in_container():
    return os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")


def fix_command(requirement, executable, has_pip, managed, container, local_packages):
    """The one command that makes `requirement` importable for this plugin, where it
    runs: into the plugin folder (pip --target) when the Python's own site-packages
    is refused (externally managed, PEP 668) or lost when the container is re-created;
    through another Python's pip (--python, pip 22.3+, which resolves for this
    Python's version) when this one has none."""
    if has_pip and not (managed or container):
        return '"%s" -m pip install "%s"' % (executable, requirement)
    if has_pip:
        return '"%s" -m pip install --target "%s" "%s"' % (executable, local_packages, requirement)
    return 'python3 -m pip --python "%s" install --target "%s" "%s"' % (executable, local_packages, requirement)


def problem_message(module, requirement, error, bundle, record, environment):
    """One line: what does not import, why, and the fix for this environment."""
    executable, version = environment["executable"], environment["version"]
    reason = ("%s: %s" % (type(error).__name__, error)).replace("\n", " ")
    where = "Stash's Python (%s, Python %s)" % (executable, version)
    if requirement == "requests":
        what = "stash-backup needs the Python package requests, which %s cannot import (%s)" % (where, reason)
    elif bundle:
        bundled = record.get("distributions", {}).get("gql", "?")
        what = "the gql that stash-backup brings (gql %s, bundled from Python %s) does not load in %s (%s)" % (
            bundled,
            record.get("python", "?"),
            where,
            reason,
        )
    else:
        what = "the gql in %s does not load (%s)" % (where, reason)
    command = fix_command(
        requirement,
        executable,
        environment["has_pip"],
        environment["managed"],
        environment["container"],
        environment["local_packages"],
    )
    inside = ", inside Stash's container" if environment["container"] else ""
    note = "" if environment["has_pip"] else " (Stash's Python has no pip; this uses another Python's pip)"
    return "%s. Fix%s: %s%s" % (what, inside, command, note)


def environment(plugin_dir):
    import platform

    return {
        "executable": sys.executable,
        "version": platform.python_version(),
        "has_pip": importlib.util.find_spec("pip") is not None,
        "managed": externally_managed(),
        "container": in_container(),
        "local_packages": os.path.join(plugin_dir, LOCAL_PACKAGES),
    }


def main():
    # .../<plugin>/stash_backup_plugin.pyz/stash_backup_plugin/plugin/task.py, or in a
    # clone .../<plugin>/stash_backup_plugin/plugin/task.py: the clone is the plugin folder
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    plugin_dir = root if os.path.isdir(root) else os.path.dirname(root)
    bundle = arrange_path(root, plugin_dir)
    from stash_backup_plugin.core.memory import beside_stash  # standard library only

    beside_stash()  # before requests is imported
    problem = import_problem()
    if problem:
        module, requirement, error = problem
        return _fail(
            problem_message(
                module, requirement, error, bundle, bundle_record(root) if bundle else {}, environment(plugin_dir)
            )
        )
    from stash_backup_plugin.plugin.run import main as plugin_main

    return plugin_main()
