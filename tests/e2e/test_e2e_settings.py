"""Stash's settings round trip onto an empty machine, against the real Stash on both
pinned versions: a Stash with a login, an API key, custom CSS, our plugin (with its
settings) and a scraper is backed up with `download`; on a new machine, with nothing
but the archive, `stash-restore --config NEW/config.yml` restores the database, the
images and the settings; the new Stash starts with the same login, API key, CSS,
plugin and scraper, and the same content."""

import json

import pytest
import yaml

from stash_backup_plugin.core.store import Store

from tests.support.harness import run_cli, run_restore
from tests.support.stash_server.server import StashServer, StashServerError, content_names, seed_content

pytestmark = pytest.mark.e2e

CSS = "body { background: #123456 } /* stash-backup settings test */"
SCRAPER = "name: Settings Test Scraper\nperformerByName:\n  action: scrapeJson\n  scraper: s\n"


def interface_css(server) -> str:
    return server.graphql("{ configuration { interface { css } } }")["configuration"]["interface"]["css"]


def test_settings_round_trip_onto_an_empty_machine(stash_server_factory, stash_version, tmp_path):
    old = stash_server_factory(stash_version, name="old")
    seed_content(old)
    api_key = old.enable_credentials()
    old.graphql(
        "mutation($css: String) { configureInterface(input: {css: $css, cssEnabled: true}) { css } }", {"css": CSS}
    )
    (old.root / "scrapers").mkdir(exist_ok=True)
    (old.root / "scrapers" / "settings-test.yml").write_text(SCRAPER)
    old.graphql("mutation { reloadScrapers }")
    expected = content_names(old)
    archive = tmp_path / "archive"

    made = run_cli("download", "--url", old.url, "--dest", str(archive), "--json", env={"STASH_API_KEY": api_key})
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["file"]
    store = Store(archive)
    held = {(f.root, f.path) for f in store.settings(name)}
    assert {("config", "config.yml"), ("config", "custom.css"), ("config", "scrapers/settings-test.yml")} <= held
    assert any(path.startswith("plugins/stash-backup/") for _, path in held), held
    assert not any(path.startswith(("generated/", "cache/", "blobs/", "backups/")) for _, path in held), held
    assert not any(path.endswith((".log", ".sqlite", "-wal", "-shm")) for _, path in held), held
    assert api_key not in made.stdout + made.stderr
    old.stop()

    new_root = tmp_path / "new-machine"
    restored = run_restore(
        name, "--archive", str(archive), "--with-settings", "--config", str(new_root / "config.yml"), "--yes"
    )
    assert restored.returncode == 0, restored.stderr
    assert api_key not in restored.stdout + restored.stderr
    config = yaml.safe_load((new_root / "config.yml").read_text())
    assert config["database"] == str(new_root / "stash-go.sqlite")  # moved with the config folder
    assert config["api_key"] == api_key and config["username"] == "admin"

    new = StashServer(
        old.binary,
        new_root,
        stash_version,
        api_key=api_key,
        extra_config={"python_path": old.extra_config["python_path"]},
    )
    stash_server_factory.servers.append(new)
    new.start()
    assert content_names(new) == expected
    assert interface_css(new) == CSS
    scrapers = new.graphql("{ listScrapers(types: [PERFORMER]) { name } }")["listScrapers"]
    assert "Settings Test Scraper" in [s["name"] for s in scrapers]
    plugins = new.graphql("{ plugins { id } }")["plugins"]
    assert "stash-backup" in [p["id"] for p in plugins]
    with pytest.raises(StashServerError, match="HTTP 401"):  # the login came back with the settings
        new.graphql("{ version { version } }", api_key=None)
