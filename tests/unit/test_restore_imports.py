"""The offline restore imports nothing beyond the standard library and PyYAML: it
runs with gql and requests impossible to import."""

import subprocess
import sys
from pathlib import Path

from tests.support.restore_fixtures import make_install

REPO = Path(__file__).resolve().parents[2]
BLOCK = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('gql', 'requests', 'urllib3', 'graphql'):
            raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, Blocker())
sys.argv = ['stash-restore'] + sys.argv[1:]
from stash_backup_plugin.offline.cli import main
code = main()
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('gql', 'requests', 'urllib3', 'graphql'))
assert not loaded, loaded
sys.exit(code)
"""


def run_blocked(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, cwd=REPO)


def test_restore_runs_with_gql_and_requests_blocked(tmp_path):
    install = make_install(tmp_path / "stash")
    result = run_blocked(str(install.backup_zip), "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert install.names() == ["performer-0", "performer-1", "performer-2"]


def test_list_undo_and_salvage_run_with_gql_and_requests_blocked(tmp_path):
    install = make_install(tmp_path / "stash")
    assert run_blocked("--list", "--config", str(install.config)).returncode == 0
    assert run_blocked(str(install.backup_plain), "--config", str(install.config), "--yes").returncode == 0
    assert run_blocked("--undo", "--config", str(install.config), "--yes").returncode == 0
    result = run_blocked("--salvage", str(install.backup_plain), "--output", str(tmp_path / "out.sqlite"))
    assert result.returncode == 0, result.stderr
