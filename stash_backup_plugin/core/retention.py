"""Retention policy with restic's semantics (`restic forget`). Pure logic, no I/O.

Items are sorted newest first and walked once. `last` keeps the first N; the
period rules keep the newest item of each hour/day/ISO week/month/year until their
count is spent (-1 = unlimited). Rules are OR-ed and every rule that matches an item
spends one of its count. A rule with count left when it reaches the oldest item keeps
that item (its reason then reads "oldest …", as restic's does). `within` keeps items
newer than (newest item's time - duration); a zero duration is no rule (restic's
`Duration.Zero()`). Safety: an empty policy keeps everything, and protected items are
always kept.

Backups that failed verification never compete for a rule's slot (`plan_retention`):
otherwise a bad backup could be a day's "newest" and push out that day's good one.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Hashable, Iterable, Mapping, Optional, Sequence

from .errors import UsageError
from .keep_rules import COUNT_RULES

UNLIMITED = -1
_DURATION = re.compile(r"(\d+)([ymwdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar duration like restic's `1y6m2w3d4h` (m = months)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def before(self, moment: datetime) -> datetime:
        """`moment` minus this duration, by the calendar (month ends clamp)."""
        month_index = moment.year * 12 + (moment.month - 1) - self.years * 12 - self.months
        year, month = divmod(month_index, 12)
        month += 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        shifted = moment.replace(year=year, month=month, day=day)
        return shifted - timedelta(days=self.days, hours=self.hours)

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __bool__(self) -> bool:
        # `if policy.within:` must mean "a within rule is set": 0d/0h is no rule.
        return not self.is_zero()

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"


def parse_duration(text: str) -> Duration:
    """Parse `2y`, `6m`, `2w`, `7d`, `12h` or a combination such as `1m15d`."""
    cleaned = text.strip().lower()
    if not cleaned or _DURATION.sub("", cleaned):
        raise UsageError(
            f"invalid duration {text!r}: use a number and a unit y, m (months), w, d or h, e.g. 7d or 1m15d"
        )
    totals = {"y": 0, "m": 0, "w": 0, "d": 0, "h": 0}
    for number, unit in _DURATION.findall(cleaned):
        totals[unit] += int(number)
    return Duration(totals["y"], totals["m"], totals["d"] + 7 * totals["w"], totals["h"])


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Optional[Duration] = None

    def __post_init__(self):
        if self.within is not None and self.within.is_zero():
            object.__setattr__(self, "within", None)  # keep-within 0d is no rule, as in restic
        for name, count in self.counts():
            if count < UNLIMITED:
                raise UsageError(f"keep-{name} is {count}: use a count of 0 or more, or -1 for unlimited")

    @classmethod
    def of(cls, counts: Mapping[str, int], within: Optional[str] = None) -> "Policy":
        """From each count rule's count by name (missing: 0) and the within rule's text
        (empty or None: no rule): how the CLI's options and the plugin's settings become
        a policy."""
        return cls(
            **{rule.name: counts.get(rule.name, 0) for rule in COUNT_RULES},
            within=parse_duration(within) if within else None,
        )

    def counts(self) -> list[tuple[str, int]]:
        return [(rule.name, getattr(self, rule.name)) for rule in COUNT_RULES]

    def is_empty(self) -> bool:
        return all(count == 0 for _, count in self.counts()) and self.within is None

    def describe(self) -> str:
        parts = [f"keep-{name} {'unlimited' if n == UNLIMITED else n}" for name, n in self.counts() if n]
        if self.within is not None:
            parts.append(f"keep-within {self.within}")
        return ", ".join(parts) or "no rule"


@dataclass
class Decision:
    item: object
    time: datetime
    reasons: list[str] = field(default_factory=list)
    failed: bool = False  # failed verification: kept apart, never counted by a rule

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


# What a schedule that runs more often than daily keeps when no --keep-* is given: a
# day of hourly backups, then the usual thinning (at most 24 + 7 + 4 + 12 = 47 backups,
# whatever the years). Without it an hourly schedule would keep 8,760 backups a year.
FREQUENT_SCHEDULE_POLICY = Policy(hourly=24, daily=7, weekly=4, monthly=12)


def default_schedule_policy(every: Duration) -> Optional[Policy]:
    """The policy a schedule of this period gets when none is given. Pure."""
    frequent = every.years == every.months == every.days == 0 and 0 < every.hours < 24
    return FREQUENT_SCHEDULE_POLICY if frequent else None


def _iso_week(moment: datetime) -> tuple[int, int]:
    year, week, _ = moment.isocalendar()
    return year, week


_PERIODS: dict[str, Callable[[datetime], Hashable]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": _iso_week,
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}

_REASON = {
    "last": "last snapshot",
    "hourly": "hourly snapshot",
    "daily": "daily snapshot",
    "weekly": "weekly snapshot",
    "monthly": "monthly snapshot",
    "yearly": "yearly snapshot",
}


def apply_policy(
    items: Iterable[tuple[object, datetime]], policy: Policy, protected: Sequence[object] = ()
) -> list[Decision]:
    """Decide for every (item, time) whether it is kept, and why. Newest first."""
    decisions = sorted((Decision(item, time) for item, time in items), key=lambda d: d.time, reverse=True)
    if not decisions:
        return []
    if policy.is_empty():
        for decision in decisions:
            decision.reasons.append("policy is empty")
        return decisions
    remaining = dict(policy.counts())
    last_bucket: dict[str, Hashable] = {}
    cutoff = policy.within.before(decisions[0].time) if policy.within is not None else None
    for index, decision in enumerate(decisions):
        is_oldest = index == len(decisions) - 1
        if cutoff is not None and decision.time > cutoff:
            decision.reasons.append(f"within {policy.within}")
        for rule, count in remaining.items():
            if count == 0:
                continue
            bucket = index if rule == "last" else _PERIODS[rule](decision.time)
            same_bucket = rule in last_bucket and bucket == last_bucket[rule]
            if same_bucket and not is_oldest:
                continue
            last_bucket[rule] = bucket
            if count > 0:
                remaining[rule] = count - 1
            decision.reasons.append(("oldest " if same_bucket else "") + _REASON[rule])
        if decision.item in protected and not decision.reasons:
            decision.reasons.append("newest verified backup")
    return decisions


FAILED_REASON = "failed verification: not counted by any rule, not removed"


def plan_retention(backups: Iterable[tuple[object, datetime, bool]], policy: Policy) -> list[Decision]:
    """Decide over (backup, time, verified good?) triples. Newest first.

    Only good backups compete for the rules' slots, and the newest good one is always
    kept. A backup that failed verification is never counted (it must not be a day's
    backup in place of a good one) and never removed: a verdict can be wrong for a
    while (a read error, a disk being remounted; re-verifying clears it), a damaged
    database still gives most of its rows to `stash-restore --salvage`, and removing is
    the one step that cannot be undone, so it stays the user's call. Every run reports
    such backups, so they are not forgotten."""
    listed = list(backups)
    good = [(backup, time) for backup, time, ok in listed if ok]
    newest_good = max(good, key=lambda pair: pair[1])[0] if good else None
    decisions = apply_policy(good, policy, protected=[newest_good] if good else [])
    decisions += [Decision(backup, time, [FAILED_REASON], failed=True) for backup, time, ok in listed if not ok]
    return sorted(decisions, key=lambda d: d.time, reverse=True)


def plan_backup_folder(
    names: Iterable[str],
    ours: Iterable[str],
    keep_last: int,
    database_name: str,
    include_others: bool = False,
    protected: Iterable[str] = (),
) -> list[str]:
    """Which backups in Stash's own backup folder to delete so that `keep_last` remain.
    Only backups our task made there (`ours`) are counted and removed; with
    `include_others`, every backup of this database too (those Stash made before a
    schema migration, or a user's clicks), never the anonymised copies. `protected`
    (the backup just made) is always kept. Newest by the time in the name."""
    from .naming import parse_backup_name

    if keep_last <= 0:
        return []
    ours, protected = set(ours), set(protected)
    candidates = []
    for name in names:
        parsed = parse_backup_name(name)
        if not parsed or parsed.database_name != database_name:
            continue  # another database's, or an anonymised copy (<db>.anonymous.<schema>.<time>)
        if name in ours or include_others:
            candidates.append((parsed.created, name))
    candidates.sort(reverse=True)
    kept = [name for _, name in candidates[:keep_last]]
    return [name for _, name in candidates[keep_last:] if name not in protected and name not in kept]


PRE_UPGRADE_REASON = "pre-upgrade {tag}: until a verified backup of schema {to} passes a restore drill"


def upgrade_target(tag: str) -> Optional[int]:
    """The schema a pre-upgrade backup was migrated to ("75→84" gives 84), or None."""
    _, _, to = tag.partition("→")
    return int(to) if to.isdigit() else None


def held_before_upgrade(entries: list) -> dict:
    """Stash's pre-migration backups that retention must keep, with the reason: each
    until a verified backup of its new schema (or later) has passed a restore drill;
    one whose tag cannot be read is held for good (fail closed)."""
    drilled = [e.schema_version for e in entries if e.verified_ok and e.drill.get("ok")]
    held = {}
    for entry in entries:
        to = upgrade_target(entry.pre_upgrade) if entry.pre_upgrade else None
        if entry.pre_upgrade and (to is None or not any(schema >= to for schema in drilled)):
            held[entry.file] = PRE_UPGRADE_REASON.format(tag=entry.pre_upgrade, to=to if to is not None else "?")
    return held
