"""Retention with restic's semantics, against golden cases worked out by hand from
restic's rules (internal/data/snapshot_policy.go, doc/060_forget.rst)."""

from datetime import datetime, timedelta

import pytest

from stash_backup_plugin.core.errors import UsageError
from stash_backup_plugin.core.retention import (
    FAILED_REASON,
    Duration,
    Policy,
    apply_policy,
    parse_duration,
    plan_retention,
)


def items(*stamps):
    return [(stamp, datetime.fromisoformat(stamp)) for stamp in stamps]


def kept(decisions):
    return [d.item for d in decisions if d.keep]


DAYS = items(
    "2026-11-20T10:00",
    "2026-11-20T22:00",
    "2026-11-21T09:00",
    "2026-11-22T09:00",
    "2026-11-23T09:00",
    "2026-11-23T18:00",
    "2026-11-24T09:00",
)

GOLDEN = [
    ("empty policy keeps all", Policy(), DAYS, [d[0] for d in reversed(DAYS)]),
    ("keep-last 2", Policy(last=2), DAYS, ["2026-11-24T09:00", "2026-11-23T18:00"]),
    (
        "keep-daily 3: newest of each day",
        Policy(daily=3),
        DAYS,
        ["2026-11-24T09:00", "2026-11-23T18:00", "2026-11-22T09:00"],
    ),
    (
        "keep-daily unlimited",
        Policy(daily=-1),
        DAYS,
        [
            "2026-11-24T09:00",
            "2026-11-23T18:00",
            "2026-11-22T09:00",
            "2026-11-21T09:00",
            "2026-11-20T22:00",
            "2026-11-20T10:00",
        ],
    ),  # the oldest is kept: the rule still had count left when it reached it
    (
        "last 1 OR daily 2 overlap spends both counts",
        Policy(last=1, daily=2),
        DAYS,
        ["2026-11-24T09:00", "2026-11-23T18:00"],
    ),
    ("keep-weekly 1 (ISO weeks)", Policy(weekly=1), DAYS, ["2026-11-24T09:00"]),
    (
        "keep-weekly 2 crosses an ISO week (Mon 23 Nov)",
        Policy(weekly=2),
        DAYS,
        ["2026-11-24T09:00", "2026-11-22T09:00"],
    ),
    (
        "keep-within 2d: strictly newer than newest - 2d, not now - 2d",
        Policy(within=Duration(days=2)),
        DAYS,
        ["2026-11-24T09:00", "2026-11-23T18:00", "2026-11-23T09:00"],
    ),
    ("rule with count left keeps the oldest", Policy(monthly=5), DAYS, ["2026-11-24T09:00", "2026-11-20T10:00"]),
]


@pytest.mark.parametrize("name,policy,given,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden(name, policy, given, expected):
    assert kept(apply_policy(given, policy)) == expected


def test_reasons_are_recorded_for_every_rule_that_matched():
    decisions = apply_policy(DAYS, Policy(last=1, daily=1, weekly=1))
    assert decisions[0].reasons == ["last snapshot", "daily snapshot", "weekly snapshot"]


def test_weekly_and_daily_overlap_like_restic():
    # 7 daily + 5 weekly over 40 consecutive days ending on a Sunday: the 7 dailies are
    # one whole ISO week, which also spends one weekly: 7 + 4 distinct items.
    start = datetime(2025, 12, 31, 12)
    assert (start + timedelta(days=39)).isoweekday() == 7
    days = [(i, start + timedelta(days=i)) for i in range(40)]
    result = kept(apply_policy(days, Policy(daily=7, weekly=5)))
    assert len(result) == 7 + 4


def test_yearly_and_monthly_buckets():
    given = items("2024-03-01T00:00", "2024-12-31T00:00", "2025-06-01T00:00", "2025-06-15T00:00", "2026-01-01T00:00")
    assert kept(apply_policy(given, Policy(yearly=2))) == ["2026-01-01T00:00", "2025-06-15T00:00"]
    assert kept(apply_policy(given, Policy(monthly=2))) == ["2026-01-01T00:00", "2025-06-15T00:00"]


def test_hourly_bucket():
    given = items("2026-11-24T09:05", "2026-11-24T09:55", "2026-11-24T10:01")
    assert kept(apply_policy(given, Policy(hourly=2))) == ["2026-11-24T10:01", "2026-11-24T09:55"]


def test_protected_item_is_kept_even_when_no_rule_keeps_it():
    decisions = apply_policy(DAYS, Policy(last=1), protected=["2026-11-20T10:00"])
    assert kept(decisions) == ["2026-11-24T09:00", "2026-11-20T10:00"]
    assert decisions[-1].reasons == ["newest verified backup"]


def test_negative_counts_other_than_unlimited_are_refused():
    with pytest.raises(UsageError, match="keep-daily is -2"):
        Policy(daily=-2)


def test_no_items_no_decisions():
    assert apply_policy([], Policy(last=3)) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("7d", Duration(days=7)),
        ("2w", Duration(days=14)),
        ("1y6m", Duration(years=1, months=6)),
        ("12h", Duration(hours=12)),
        ("1m15d", Duration(months=1, days=15)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d7", "1x", "3 days"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


def test_month_arithmetic_clamps_to_month_end():
    assert Duration(months=1).before(datetime(2026, 3, 31)) == datetime(2026, 2, 28)
    assert Duration(years=1).before(datetime(2024, 2, 29)) == datetime(2023, 2, 28)


# --- backups that failed verification (issue 8, item 1) ---------------------------


def backups(*given):
    """(stamp, good?) pairs as plan_retention takes them."""
    return [(stamp, datetime.fromisoformat(stamp), good) for stamp, good in given]


def test_a_failed_backup_never_takes_a_days_slot_from_a_good_one():
    # today good, yesterday 20:00 failed, yesterday 03:00 good, two days ago good
    given = backups(
        ("2026-11-24T09:00", True), ("2026-11-23T20:00", False), ("2026-11-23T03:00", True), ("2026-11-22T09:00", True)
    )
    decisions = plan_retention(given, Policy(daily=7))
    assert [(d.item, d.reasons) for d in decisions if not d.failed] == [
        ("2026-11-24T09:00", ["daily snapshot"]),
        ("2026-11-23T03:00", ["daily snapshot"]),
        ("2026-11-22T09:00", ["daily snapshot"]),
    ]
    [failed] = [d for d in decisions if d.failed]
    assert failed.item == "2026-11-23T20:00" and failed.keep and failed.reasons == [FAILED_REASON]
    assert [d.item for d in decisions] == [g[0] for g in given]  # newest first, failed ones in place


def test_failed_backups_spend_no_count():
    given = backups(
        ("2026-11-24T09:00", False),
        ("2026-11-23T09:00", False),
        ("2026-11-22T09:00", True),
        ("2026-11-21T09:00", True),
        ("2026-11-20T09:00", True),
    )
    decisions = plan_retention(given, Policy(last=2))
    assert [d.item for d in decisions if d.keep and not d.failed] == ["2026-11-22T09:00", "2026-11-21T09:00"]
    assert [d.item for d in decisions if not d.keep] == ["2026-11-20T09:00"]


def test_the_newest_good_backup_is_kept_even_behind_newer_failed_ones():
    given = backups(("2026-11-24T09:00", False), ("2026-11-01T09:00", True), ("2026-10-01T09:00", True))
    decisions = plan_retention(given, Policy(within=Duration(hours=1)))
    assert [d.item for d in decisions if d.keep] == ["2026-11-24T09:00", "2026-11-01T09:00"]


def test_only_failed_backups_are_all_kept():
    decisions = plan_retention(backups(("2026-11-24T09:00", False), ("2026-11-23T09:00", False)), Policy(last=1))
    assert all(d.keep and d.failed for d in decisions)


# --- a zero duration is no rule (issue 8, item 2) ----------------------------------


@pytest.mark.parametrize("text", ["0d", "0h", "0y0m0w0d0h"])
def test_keep_within_zero_is_no_rule(text):
    policy = Policy(within=parse_duration(text))
    assert policy.is_empty() and policy.within is None and policy.describe() == "no rule"
    assert kept(apply_policy(DAYS, policy)) == [d[0] for d in reversed(DAYS)]


def test_keep_within_zero_beside_another_rule_adds_nothing():
    policy = Policy(last=2, within=parse_duration("0d"))
    assert policy == Policy(last=2) and kept(apply_policy(DAYS, policy)) == ["2026-11-24T09:00", "2026-11-23T18:00"]


def test_a_zero_duration_is_false_and_any_other_is_true():
    assert not Duration() and Duration(hours=1) and Duration(years=1)


# --- keep-last in Stash's own backup folder --------------------------------------------------


def test_backup_folder_keep_last_counts_and_removes_only_ours():
    from stash_backup_plugin.core.retention import plan_backup_folder

    names = [f"stash-go.sqlite.85.2026110{d}_030000.zip" for d in range(1, 7)]
    names += [
        "stash-go.sqlite.72.20261001_120000",  # Stash's own, before a schema migration
        "stash-go.sqlite.anonymous.85.20261105_100000",  # "Anonymise database": not a backup
        "other.sqlite.85.20261106_100000",
        "notes.txt",
    ]
    ours = names[:6]
    assert plan_backup_folder(names, ours, 2, "stash-go.sqlite", protected=[names[5]]) == list(reversed(names[:4]))
    assert plan_backup_folder(names, ours, 0, "stash-go.sqlite") == []
    # asked to: Stash's own backups of this database count and go too, never the anonymised or another database's
    assert plan_backup_folder(names, ours[4:], 2, "stash-go.sqlite", include_others=True) == [
        names[3],
        names[2],
        names[1],
        names[0],
        "stash-go.sqlite.72.20261001_120000",
    ]
    # the backup just made is never removed, even when the clock put it in the past
    assert "stash-go.sqlite.85.20261101_030000.zip" not in plan_backup_folder(
        names, ours, 1, "stash-go.sqlite", protected=["stash-go.sqlite.85.20261101_030000.zip"]
    )


# --- the keep rules, declared once (core/keep_rules.py) ------------------------------


def test_the_policy_has_one_field_per_keep_rule_in_the_tables_order():
    from dataclasses import fields
    from stash_backup_plugin.core.keep_rules import KEEP_RULES

    assert [f.name for f in fields(Policy)] == [rule.name for rule in KEEP_RULES]


def test_plugin_yml_declares_each_keep_rule_as_the_table_does():
    """The manifest is the one file Stash reads: it cannot import the table, so this
    test holds it to it (and prints the block to paste when they differ)."""
    from pathlib import Path
    import yaml
    from stash_backup_plugin.core.keep_rules import KEEP_RULES

    settings = yaml.safe_load((Path(__file__).resolve().parents[2] / "plugin.yml").read_text())["settings"]
    expected = {
        rule.setting: {"displayName": rule.display_name, "description": rule.description, "type": rule.setting_type}
        for rule in KEEP_RULES
    }
    declared = {name: value for name, value in settings.items() if name.startswith("keep")}
    assert declared == expected, "plugin.yml's keep settings should read:\n" + yaml.safe_dump(
        expected, sort_keys=False, width=1000
    )


@pytest.mark.parametrize("command", ["prune", "schedule", "offsite push", "offsite prune"])
def test_every_command_that_prunes_takes_the_tables_keep_options(command):
    from stash_backup_plugin.cli import commands, options
    from stash_backup_plugin.core.keep_rules import KEEP_RULES
    from tests.unit.test_docs import ALL_COMMANDS, _options

    assert {o for o in _options(ALL_COMMANDS[command]) if o.startswith("--keep-")} == {r.option for r in KEEP_RULES}
    extra = ["install"] if command == "schedule" else []
    args = commands._parser().parse_args(
        [*command.split(), *extra, "--keep-last", "2", "--keep-weekly", "-1", "--keep-within", "1m2w"]
    )
    assert options.policy_of(args) == Policy(last=2, weekly=-1, within=Duration(months=1, days=14))


def test_the_scheduled_prune_gets_the_same_policy_back():
    from stash_backup_plugin.cli import commands, options

    given = commands._parser().parse_args(
        ["schedule", "install", "--keep-daily", "7", "--keep-yearly", "-1", "--keep-within", "2w1d"]
    )
    keep = options.keep_arguments(options.policy_of(given))
    assert keep == ["--keep-daily=7", "--keep-yearly=-1", "--keep-within=15d"]
    assert options.policy_of(commands._parser().parse_args(["prune", *keep])) == options.policy_of(given)


def test_of_two_backups_made_in_one_second_the_later_is_the_newer():
    """Stash names backups to the second; ours add -N for a second one in the same
    second. keep-last 1 must keep the one made later (it held the killed run's record
    and dropped the next run's backup in CI once)."""
    from stash_backup_plugin.core.archive import Entry
    from stash_backup_plugin.core.retention import Policy, plan_retention

    made = [
        Entry("stash-go.sqlite.85.20261203_034529", 1, "a", 85, "2026-12-03T03:45:29", "stored", verified_ok=True),
        Entry("stash-go.sqlite.85.20261203_034529-2", 1, "b", 85, "2026-12-03T03:45:29", "stored", verified_ok=True),
        Entry("stash-go.sqlite.85.20261203_034528", 1, "c", 85, "2026-12-03T03:45:28", "stored", verified_ok=True),
    ]
    for order in (made, made[::-1]):
        decisions = plan_retention([(e, e.created_time, True) for e in order], Policy(last=1))
        assert [d.item.file for d in decisions if d.keep] == ["stash-go.sqlite.85.20261203_034529-2"]
