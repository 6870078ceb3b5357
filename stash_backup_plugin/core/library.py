"""What a Stash library holds, as its server reports it and as its database file holds
it: the counts of Stash's `stats` query (recorded with each backup, compared by the
restore drill) and the newest edit of each kind. Both together tell whether a database
file is the one a running server serves (jobs/download's live copy) without trusting
its path: a stale copy left at the same path, or another Stash's database, differs.
Standard library only."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from .sqlite_check import counts_in

# kind -> the field of Stash's `stats` that counts it
STATS_FIELDS = {
    "scenes": "scene_count",
    "images": "image_count",
    "galleries": "gallery_count",
    "performers": "performer_count",
    "studios": "studio_count",
    "tags": "tag_count",
    "groups": "group_count",
}
STATS_SELECTION = "stats { " + " ".join(STATS_FIELDS.values()) + " }"
# kind -> (Stash's find query, its list field): the newest `updated_at` of each kind,
# which Stash sorts as SQLite does (the column's text, descending).
NEWEST_EDITS = {
    "scenes": ("findScenes", "scenes"),
    "images": ("findImages", "images"),
    "galleries": ("findGalleries", "galleries"),
    "performers": ("findPerformers", "performers"),
    "studios": ("findStudios", "studios"),
    "tags": ("findTags", "tags"),
}
FINGERPRINT_QUERY = (
    "query StashBackupLibrary { "
    + STATS_SELECTION
    + " "
    + " ".join(
        f'newest_{kind}: {query}(filter: {{sort: "updated_at", direction: DESC, per_page: 1}}) '
        f"{{ {items} {{ updated_at }} }}"
        for kind, (query, items) in NEWEST_EDITS.items()
    )
    + " }"
)


class UnexpectedAnswer(ValueError):
    """The server's answer does not have the shape asked for."""


@dataclass(frozen=True)
class Fingerprint:
    counts: dict = field(default_factory=dict)  # kind -> rows
    newest: dict = field(default_factory=dict)  # kind -> the newest updated_at, as text (None: no rows)


def counts_from_stats(stats: dict) -> dict:
    return {kind: stats.get(name) for kind, name in STATS_FIELDS.items()}


def compare_counts(expected: dict, reported: dict, said_by: str = "the backup recorded") -> list[str]:
    return [
        f"{kind}: {said_by} {count}, Stash reports {reported.get(kind)}"
        for kind, count in expected.items()
        if kind in STATS_FIELDS and reported.get(kind) != count
    ]


def from_answer(data: object) -> Fingerprint:
    """The server's answer to FINGERPRINT_QUERY, its shape checked."""
    if not isinstance(data, dict) or not isinstance(data.get("stats"), dict):
        raise UnexpectedAnswer("no stats in the answer")
    counts = counts_from_stats(data["stats"])
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in counts.values()):
        raise UnexpectedAnswer("stats are not all numbers")
    newest = {}
    for kind, (_, items) in NEWEST_EDITS.items():
        found = data.get(f"newest_{kind}")
        rows = found.get(items) if isinstance(found, dict) else None
        if not isinstance(rows, list) or len(rows) > 1 or not all(isinstance(r, dict) for r in rows):
            raise UnexpectedAnswer(f"no list of {items} in the answer")
        value = rows[0].get("updated_at") if rows else None
        if value is not None and not isinstance(value, str):
            raise UnexpectedAnswer(f"the newest of {items} has no time")
        newest[kind] = value
    return Fingerprint(counts, newest)


def of_database(connection: sqlite3.Connection) -> Fingerprint:
    """The same from a database (its counts as sqlite_check.counts_in makes them)."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    newest: dict = {}  # a kind's table has Stash's name for it
    for kind in NEWEST_EDITS:
        newest[kind] = None
        if kind in tables and "updated_at" in {c[1] for c in connection.execute(f'PRAGMA table_info("{kind}")')}:
            row = connection.execute(f'SELECT updated_at FROM "{kind}" ORDER BY updated_at DESC LIMIT 1').fetchone()
            newest[kind] = None if row is None or row[0] is None else str(row[0])
    return Fingerprint(counts_in(connection), newest)


def differences(server: Fingerprint, database: Fingerprint) -> list[str]:
    """What the database file holds that the server does not report ([]: the same library)."""
    found = compare_counts(database.counts, server.counts, said_by="the file holds")
    found += [
        f"{kind}: the file counts none, Stash reports {n}"
        for kind, n in server.counts.items()
        if kind not in database.counts and n
    ]
    for kind in NEWEST_EDITS:
        ours, theirs = database.newest.get(kind), server.newest.get(kind)
        if not same_moment(ours, theirs):
            found.append(f"newest edit of {kind}: the file has {ours}, Stash reports {theirs}")
    return found


def same_moment(one: Optional[str], other: Optional[str]) -> bool:
    """Two of Stash's timestamps name the same second: SQLite keeps what Go wrote (its
    zone, maybe fractions), GraphQL answers RFC 3339. Unreadable ones compare as text."""
    if one is None or other is None:
        return one is other
    first, second = _instant(one), _instant(other)
    if first is None or second is None:
        return one == other
    return first == second


def _instant(text: str) -> Optional[int]:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # Go's SQLite driver reads a zone-less time as UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() // 1)
