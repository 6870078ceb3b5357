"""The build's one step beyond pyproject.toml: the wheel carries plugin.yml, the
repository's top-level plugin manifest (its only copy), as package data under a name
Stash never loads, so that install-plugin and package work from an installed wheel
(cli/install.py reads it there)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MANIFEST = Path(__file__).resolve().parent / "plugin.yml"
PACKAGED = Path("stash_backup_plugin") / "plugin" / "manifest.yml.in"  # cli/install.py: PACKAGED_MANIFEST


class BuildPy(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / PACKAGED
        self.mkpath(str(target.parent))
        self.copy_file(str(MANIFEST), str(target))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PACKAGED)]


setup(cmdclass={"build_py": BuildPy})
