"""The keep rules, declared once: this table feeds the retention Policy
(core/retention.py), the CLI's --keep-* options (cli/commands.py), the plugin's
keep settings as it reads them (plugin/run.py) and as plugin.yml declares them
(tests/unit/test_retention.py checks that file against this table). Standard library
only (dataclasses, which the CLI loads anyway): the CLI builds its options from it at
every start."""

from dataclasses import dataclass


@dataclass(frozen=True)
class KeepRule:
    """One keep rule, declared once: the Policy field `name`, the CLI option
    --keep-<name>, the plugin setting keep<Name> (plugin.yml, checked against this by
    tests/unit/test_retention.py) and what it keeps, as --help and the settings page say it."""

    name: str
    keeps: str  # completes "Keep …"

    @property
    def option(self) -> str:
        return f"--keep-{self.name}"

    @property
    def setting(self) -> str:
        return "keep" + self.name.capitalize()

    @property
    def display_name(self) -> str:
        return f"Keep {self.name}"

    @property
    def is_count(self) -> bool:
        """A count (NUMBER, -1 = unlimited); else a duration (STRING)."""
        return self.name != "within"

    @property
    def setting_type(self) -> str:
        return "NUMBER" if self.is_count else "STRING"

    @property
    def description(self) -> str:
        return f"Keep {self.keeps}" + (" (-1 = unlimited)." if self.is_count else ".")


KEEP_RULES = (
    KeepRule("last", "the N newest backups"),
    KeepRule("hourly", "the newest backup of each of the last N hours that have one"),
    KeepRule("daily", "the newest backup of each of the last N days that have one"),
    KeepRule("weekly", "the newest backup of each of the last N ISO weeks that have one"),
    KeepRule("monthly", "the newest backup of each of the last N months that have one"),
    KeepRule("yearly", "the newest backup of each of the last N years that have one"),
    KeepRule(
        "within",
        "every backup newer than the newest one minus this duration, e.g. 7d, 2w, 1m15d (y, m = months, w, d, h)",
    ),
)
COUNT_RULES = tuple(rule for rule in KEEP_RULES if rule.is_count)
WITHIN_RULE = next(rule for rule in KEEP_RULES if not rule.is_count)
