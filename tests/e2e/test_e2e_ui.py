"""The Backups page in a real browser: Debian's Chromium (headless, driven by Playwright)
on Stash v0.31.1's real web UI (built from the Go module's source by build_ui.py and
served by the real server through `ui_location`), with the plugin installed as a
user installs it. The page shows real archive data; its buttons run real tasks and
show their real outcome, a failure included; the navbar badge appears when the newest
backup is made old and goes away after a backup; ten open tabs queue one automatic
backup. Screenshots at desktop and phone width land in $STASH_BACKUP_SCREENSHOTS
(the README's come from there).

STASH_BACKUP_UI_STASH=v0.28.1 runs the same tests on v0.28.1's UI (PluginApi of an older
Stash), by hand only: its first UI build takes several CPU minutes, which CI cannot spare.
test_ui_pluginapi.py guards the difference statically."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.support.archive_age import age_backups, backup_count
from tests.support.harness import install_plugin_into
from tests.support.stash_server.build import NEW_VERSION, build
from tests.support.stash_server.build_ui import build_ui
from tests.support.stash_server.server import StashServer, seed_content

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PLUGIN_ID = "my-backups"  # not the default: the script finds its own ID
DESKTOP, PHONE = {"width": 1280, "height": 860}, {"width": 390, "height": 844}
WIDE = {"width": 1600, "height": 860}
WAIT_MS = 90_000
VERSION = os.environ.get("STASH_BACKUP_UI_STASH", NEW_VERSION)


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (./scripts/test does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def stash(tmp_path_factory):
    binary = build(VERSION, log=lambda m: print(m, file=sys.stderr))
    ui = build_ui(VERSION, log=lambda m: print(m, file=sys.stderr))
    server = StashServer(
        binary, tmp_path_factory.mktemp("ui") / "stash", VERSION, extra_config={"ui_location": str(ui)}
    )
    server.start()
    try:
        install_plugin_into(server, PLUGIN_ID)
        # Stash shows its release notes once to a new install; a user closes them.
        server.graphql('mutation { configureUISetting(key: "lastNoteSeen", value: 99991231) }')
        seed_content(server, performers=2)
        yield server
    finally:
        server.stop()


def configure(server: StashServer, **settings) -> None:
    server.graphql(
        "mutation($id: ID!, $input: Map!) { configurePlugin(plugin_id: $id, input: $input) }",
        {"id": PLUGIN_ID, "input": settings},
    )


def archive_of(server: StashServer) -> Path:
    return server.root / "stash-backup-archive"


def age_newest_backup(server: StashServer, days: int) -> None:
    """Make the newest backup `days` old, as if no backup had run since."""
    age_backups(archive_of(server), days)


def open_page(browser, server: StashServer, path: str, viewport=DESKTOP):
    page = browser.new_page(viewport=viewport)
    errors, elsewhere = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith((server.url, "data:", "blob:")) else elsewhere.append(request.url)
        ),
    )
    page.goto(server.url + path)
    page.errors, page.elsewhere = errors, elsewhere
    return page


def screenshot(page, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("STASH_BACKUP_SCREENSHOTS")
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


def visible_badge(page):
    # The navbar renders its utility items twice (menu and buttons); CSS shows one.
    return page.locator("[data-testid=stash-backup-badge]:visible").first


def run_action(page, mode: str) -> str:
    """Press a button and wait for its real outcome; returns the outcome's CSS classes and text."""
    action = page.get_by_test_id(f"stash-backup-action-{mode}")
    action.get_by_role("button").click()
    outcome = page.get_by_test_id(f"stash-backup-outcome-{mode}")
    outcome.wait_for(timeout=WAIT_MS)
    return outcome.get_attribute("class") + " | " + outcome.inner_text()


def test_backups_page_runs_real_tasks_and_shows_their_real_outcome(browser, stash, tmp_path):
    configure(stash, autoBackup=False, archiveFolder="")
    page = open_page(browser, stash, f"/plugins/{PLUGIN_ID}")  # a full load of the page's own URL
    page.get_by_test_id("stash-backup-page").wait_for(timeout=WAIT_MS)
    visible_badge(page).wait_for(timeout=WAIT_MS)  # no backup yet: stale
    assert page.get_by_test_id("stash-backup-age").inner_text() == "none"
    labels = page.locator("[data-testid^=stash-backup-action-] button").all_inner_texts()
    assert labels == ["Back up now", "Verify", "Restore drill", "Apply retention", "Copy off-site"], labels

    outcome = run_action(page, "download")
    assert "alert-success" in outcome and re.search(r"Archived stash-go\.sqlite\.\d+\.", outcome), outcome
    table = page.get_by_test_id("stash-backup-table")
    table.wait_for()
    assert "verified" in table.inner_text()
    assert page.get_by_test_id("stash-backup-state").inner_text() == "Up to date"
    page.get_by_test_id("stash-backup-badge").first.wait_for(state="detached", timeout=WAIT_MS)
    assert "alert-success" in run_action(page, "verify")
    screenshot(page, "backups-desktop.png", tmp_path)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    screenshot(page, "backups-phone.png", tmp_path)
    page.set_viewport_size(DESKTOP)

    # A failure: the archive folder cannot be created (its parent is a file). Stash's
    # job still ends FINISHED; the page shows what really happened.
    blocker = stash.root / "not-a-folder"
    blocker.write_text("a file")
    configure(stash, archiveFolder=str(blocker / "archive"))
    outcome = run_action(page, "download")
    assert "alert-danger" in outcome and "not-a-folder" in outcome, outcome
    failure = page.get_by_test_id("stash-backup-last-failure")
    failure.wait_for()
    assert "Backup failed" in failure.inner_text()
    screenshot(page, "backups-failure.png", tmp_path)
    configure(stash, archiveFolder="")
    assert not page.errors, page.errors
    assert not page.elsewhere, f"the page asked hosts other than Stash: {page.elsewhere}"
    page.close()


def test_stale_badge_appears_on_every_page_and_goes_after_a_backup(browser, stash, tmp_path):
    configure(stash, autoBackup=False, archiveFolder="")
    if not backup_count(archive_of(stash)):
        stash.run_plugin_task(PLUGIN_ID, "Download backup to archive")
    age_newest_backup(stash, days=3)
    page = open_page(browser, stash, "/performers")
    badge = visible_badge(page)
    badge.wait_for(timeout=WAIT_MS)
    # At 1280 px, beside /performers' New button, only its compact form fits (the next
    # test): the full text is its tooltip, and its face where the navbar has room.
    assert re.search(r"newest verified backup is 3 d old", badge.get_attribute("title")), badge.get_attribute("title")
    page.set_viewport_size(WIDE)
    page.wait_for_function(
        "() => /Backup 3 d old/.test(document.querySelector("
        "'.navbar-buttons [data-testid=stash-backup-badge]').innerText)",
        timeout=WAIT_MS,
    )
    assert re.search(r"Backup 3 d old", visible_badge(page).inner_text()), visible_badge(page).inner_text()
    page.set_viewport_size(PHONE)  # the phone layout's navbar shows it too
    visible_badge(page).wait_for(timeout=WAIT_MS)
    screenshot(page, "stale-badge-phone.png", tmp_path)
    page.set_viewport_size(DESKTOP)
    badge.click()
    page.get_by_test_id("stash-backup-page").wait_for(timeout=WAIT_MS)
    assert page.get_by_test_id("stash-backup-state").inner_text() == "Overdue"
    screenshot(page, "backups-stale.png", tmp_path)
    assert "alert-success" in run_action(page, "download")
    page.get_by_test_id("stash-backup-badge").first.wait_for(state="detached", timeout=WAIT_MS)
    # Settings > Tools links to the page too.
    page.goto(stash.url + "/settings?tab=tools")
    page.get_by_role("link", name="Backups").first.wait_for(timeout=WAIT_MS)
    assert not page.errors, page.errors
    page.close()


def test_ten_open_tabs_queue_one_automatic_backup(browser, stash):
    configure(stash, autoBackup=True, archiveFolder="", backupInterval="24h")
    if not backup_count(archive_of(stash)):
        stash.run_plugin_task(PLUGIN_ID, "Download backup to archive")
    age_newest_backup(stash, days=2)
    status_file = archive_of(stash) / "status.json"
    status = json.loads(status_file.read_text())
    status["auto_queued_at"] = ""
    status["jobs"]["download"]["last_attempt"] = "2000-01-01T00:00:00+00:00"  # no recent attempt holds it off
    status_file.write_text(json.dumps(status))
    # The failure test's attempt, recorded beside Stash's config when the archive was unusable.
    (stash.root / "stash-backup-status" / "status.json").unlink(missing_ok=True)
    before = backup_count(archive_of(stash))

    context = browser.new_context(viewport=DESKTOP)
    pages = [context.new_page() for _ in range(10)]
    for page in pages:
        page.goto(stash.url + "/scenes", wait_until="commit")
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        if backup_count(archive_of(stash)) > before:
            break
        time.sleep(0.5)
    time.sleep(3)  # let any second (wrongly) queued backup show itself
    context.close()
    queued = [line["message"] for line in stash.logs() if "queued an automatic backup" in line["message"]]
    assert len(queued) == 1, queued
    assert backup_count(archive_of(stash)) == before + 1
    configure(stash, autoBackup=False)


def request_id(days) -> str:
    return "no-backup" if days is None else f"{days}-days-old"


# Every button and link Stash itself puts in its navbar (brand, menu, New, donate,
# statistics, settings, help, log out, the phone menu's toggle): rendered, inside the
# viewport and the navbar's own box, and not covered by anything (elementFromPoint).
NAVBAR_LAYOUT = """() => {
  const nav = document.querySelector("nav.top-nav");
  const box = nav.getBoundingClientRect();
  const shown = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
  const ours = (e) => !!e.closest(".stash-backup-nav");
  const controls = [...nav.querySelectorAll(".btn, button, a[href]")].filter((e) => shown(e) && !ours(e)
    && !(e.matches("a[href]") && e.querySelector(".btn")));  // a link around a button: the button counts
  const problems = [];
  for (const e of controls) {
    const r = e.getBoundingClientRect();
    const name = e.title || e.getAttribute("aria-label") || e.textContent.trim() || e.className;
    if (r.left < 0 || r.right > innerWidth || r.left < box.left || r.right > box.right + 0.5
        || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5)
      problems.push(name + " is outside the navbar or the viewport: " + JSON.stringify(r));
    else {
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      if (!hit || !(e.contains(hit) || hit.contains(e))) problems.push(name + " is covered by " + (hit && hit.outerHTML.slice(0, 80)));
    }
  }
  const items = [...nav.children].filter(shown).map((e) => e.getBoundingClientRect());
  const row = [...nav.children].filter((e) => shown(e) && !e.classList.contains("navbar-collapse"))
    .map((e) => e.getBoundingClientRect());
  if (Math.max(...row.map((r) => r.top)) >= Math.min(...row.map((r) => r.bottom)))
    problems.push("the navbar wrapped to a second row, over the page: " + JSON.stringify(row));
  const badges = [...nav.querySelectorAll("[data-testid=stash-backup-badge]")].filter(shown);
  return {
    problems: problems,
    controls: controls.map((e) => e.title || e.textContent.trim() || e.className),
    viewport: innerWidth,
    navbar: Math.round(box.width),
    content: Math.round(items.reduce((sum, r) => sum + r.width, 0)
                        + parseFloat(getComputedStyle(nav).paddingLeft) + parseFloat(getComputedStyle(nav).paddingRight)),
    scroll_width: nav.scrollWidth,
    badge: badges.map((b) => ({ text: b.innerText, title: b.title, width: Math.round(b.getBoundingClientRect().width) })),
  };
}"""


CROWDED = {"width": 1250, "height": 860}  # Stash's own navbar content on /scenes is 1249 px: no room at all


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE, CROWDED], ids=["1280px", "390px", "1250px"])
@pytest.mark.parametrize("days", [None, 120], ids=["no-backup", "120-days-old"])
def test_the_badge_never_pushes_stashs_own_navbar_controls_away(browser, stash, tmp_path, viewport, days):
    """/scenes has a New button: with it, the badge's full form made the navbar's content
    1341 px at 1280 px wide, and Help and Log out fell off its right edge. The badge
    takes the widest form that fits ("No backup", "!"), never Stash's room."""
    if days is None:
        configure(stash, autoBackup=False, archiveFolder=str(tmp_path / "no-backups-yet"))
        title = "There is no verified backup yet"
    else:
        configure(stash, autoBackup=False, archiveFolder="")
        if not backup_count(archive_of(stash)):
            stash.run_plugin_task(PLUGIN_ID, "Download backup to archive")
        age_newest_backup(stash, days=days)
        title = f"The newest verified backup is {days} d old (interval 24h)"
    try:
        context = browser.new_context(viewport=DESKTOP if viewport is CROWDED else viewport)
        # The session cookie a login leaves is what makes Stash show its Log out button
        # (SessionUtils.isLoggedIn); this Stash has no password, so it changes nothing else.
        context.add_cookies([{"name": "session", "value": "x", "url": stash.url}])
        page = context.new_page()
        page.goto(stash.url + "/scenes")
        visible_badge(page).wait_for(timeout=WAIT_MS)
        page.get_by_role("button", name="New").wait_for(timeout=WAIT_MS)
        if viewport is CROWDED:  # a window made narrower: the badge must give way
            page.set_viewport_size(CROWDED)
            page.locator("[data-testid=stash-backup-badge]:visible").wait_for(state="detached", timeout=WAIT_MS)
        page.wait_for_timeout(500)  # let the layout settle
        layout = page.evaluate(NAVBAR_LAYOUT)
        print(f"navbar at {viewport['width']} px:", json.dumps(layout))
        screenshot(page, f"navbar-badge-{viewport['width']}-{request_id(days)}.png", tmp_path)
        assert layout["problems"] == [], layout
        if viewport is CROWDED:  # it yields: the Backups page still says it, and wider windows show it
            assert layout["badge"] == [], layout
            page.set_viewport_size(DESKTOP)
            visible_badge(page).wait_for(timeout=WAIT_MS)
            layout = page.evaluate(NAVBAR_LAYOUT)
            assert layout["problems"] == [], layout
        assert layout["badge"] and layout["badge"][0]["title"] == title, layout
        names = " ".join(layout["controls"])
        assert "New" in names and "Stash" in names
        if viewport is not PHONE:
            assert all(name in layout["controls"] for name in ("Help", "Log out", "Settings")), layout
            assert layout["content"] <= layout["viewport"], layout
        context.close()
    finally:
        configure(stash, archiveFolder="")


def test_the_page_shows_a_damaged_live_database_and_the_backup_to_restore(browser, stash, tmp_path):
    from tests.e2e.test_e2e_check_live import damage_tags_page, repair

    configure(stash, autoBackup=False, archiveFolder="")
    if not backup_count(archive_of(stash)):
        stash.run_plugin_task(PLUGIN_ID, "Download backup to archive")
    age_newest_backup(stash, days=1)  # every backup made before the damage is first seen
    from tests.support.harness import run_cli

    listed = json.loads(run_cli("list", "--dest", str(archive_of(stash)), "--json").stdout)
    newest = next(e["file"] for e in listed if e["verified_ok"])  # newest first
    offset, original = damage_tags_page(stash.database)
    try:
        stash.run_plugin_task(PLUGIN_ID, "Check live database")
        page = open_page(browser, stash, f"/plugins/{PLUGIN_ID}")
        alert = page.get_by_test_id("stash-backup-live-damaged")
        alert.wait_for(timeout=WAIT_MS)
        text = alert.inner_text()
        assert "live database is damaged" in text and f"Restore {newest}" in text, text
        assert "Retention removes nothing" in text
        screenshot(page, "backups-live-damaged.png", tmp_path)
    finally:
        repair(stash.database, offset, original)
    assert "alert-success" in run_action(page, "download")  # checked healthy first, then a healthy backup
    alert.wait_for(state="detached", timeout=WAIT_MS)
    assert page.get_by_test_id("stash-backup-live-ok").inner_text().startswith("Live database: healthy")
    assert not page.errors, page.errors
    page.close()


def test_a_salvaged_backup_is_shown_salvaged(browser, stash, tmp_path):
    """snapshot --offline --salvage of a damaged (stopped) install: the page marks it salvaged,
    never "verified"."""
    from tests.support.harness import run_cli
    from tests.support.restore_fixtures import make_install
    from tests.e2e.test_e2e_snapshot import damage_an_index_page

    install = make_install(tmp_path / "other-stash")
    with sqlite3.connect(install.database) as connection:  # the -wal folded in: the damage is what SQLite reads
        connection.execute("PRAGMA journal_mode=DELETE")
    damage_an_index_page(install.database)
    archive = tmp_path / "salvaged-archive"
    salvaged = run_cli("snapshot", "--offline", "--salvage", "--config", str(install.config), "--dest", str(archive))
    assert salvaged.returncode == 0, salvaged.stderr
    configure(stash, autoBackup=False, archiveFolder=str(archive))
    try:
        page = open_page(browser, stash, f"/plugins/{PLUGIN_ID}")
        badge = page.get_by_test_id("stash-backup-salvaged")
        badge.wait_for(timeout=WAIT_MS)
        assert badge.inner_text() == "salvaged" and "--allow-salvaged" in badge.get_attribute("title")
        assert "verified" not in page.get_by_test_id("stash-backup-table").inner_text()
        assert not page.errors, page.errors
    finally:
        configure(stash, archiveFolder="")
