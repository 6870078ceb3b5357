"""Our retention against restic's own golden files (tests/support/restic_policy, BSD-2; see
NOTICE there): the same 103 snapshots, the same policy, the same snapshots kept in the
same order, for the same reasons."""

import json
from datetime import datetime
from pathlib import Path

import pytest

from stash_backup_plugin.core.retention import Policy, apply_policy, parse_duration

DATA = Path(__file__).resolve().parents[1] / "support" / "restic_policy"
POLICIES = json.loads((DATA / "policies.json").read_text())
SNAPSHOTS = json.loads((DATA / "snapshots.json").read_text())


def snapshot_key(snapshot: dict) -> tuple:
    """A snapshot as restic's files show it: several share a time and differ by tags."""
    return (
        datetime.fromisoformat(snapshot["time"].replace(" ", "T").removesuffix("Z")),
        tuple(snapshot.get("tags") or ()),
        tuple(snapshot.get("paths") or ()),
    )


def policy_from(rules: dict) -> Policy:
    counts = {name: value for name, value in rules.items() if name != "within"}
    return Policy(**counts, within=parse_duration(rules["within"]) if "within" in rules else None)


def golden(number: str) -> dict:
    return json.loads((DATA / f"policy_keep_snapshots_{number}").read_text())


def test_the_input_is_restics_103_snapshots():
    keys = [snapshot_key(s) for s in SNAPSHOTS]
    assert len(keys) == 103
    assert sorted(snapshot_key(s) for s in golden("36")["keep"]) == sorted(keys)  # keep-last -1 keeps them all


def test_every_restic_file_here_is_either_run_or_left_out_with_a_reason():
    files = {p.name.rsplit("_", 1)[1] for p in DATA.glob("policy_keep_snapshots_*")}
    assert files == set(POLICIES["taken"])
    assert set(POLICIES["taken"]).isdisjoint(POLICIES["left_out"])
    assert len(POLICIES["taken"]) + len(POLICIES["left_out"]) == 40  # restic's cases 0..39


@pytest.mark.parametrize("number", sorted(POLICIES["taken"], key=int))
def test_same_snapshots_kept_for_the_same_reasons_as_restic(number):
    expected = golden(number)
    items = [(index, snapshot_key(s)[0]) for index, s in enumerate(SNAPSHOTS)]
    decisions = [d for d in apply_policy(items, policy_from(POLICIES["taken"][number])) if d.keep]
    assert [snapshot_key(SNAPSHOTS[d.item]) for d in decisions] == [snapshot_key(s) for s in expected["keep"]]
    assert [d.reasons for d in decisions] == [r["matches"] for r in expected["reasons"]]
