"""Make an archive's backups look old (as if no backup had run since), in the stored
layout (backups/*.record) and in the old one (manifest.json) alike."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from stash_backup_plugin.core import record as records


def age_backups(archive: Path, days: int) -> None:
    old = (datetime.now(timezone.utc) - timedelta(days=days)).replace(microsecond=0).isoformat()
    for path in sorted((archive / "backups").glob(f"*{records.SUFFIX}")):
        header = records.read_header(path)
        header.added_at = old
        records.rewrite_header(path, header)
    manifest = archive / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        for entry in data["entries"]:
            entry["added_at"] = old
        manifest.write_text(json.dumps(data))


def backup_count(archive: Path) -> int:
    stored = len(list((archive / "backups").glob(f"*{records.SUFFIX}")))
    manifest = archive / "manifest.json"
    return stored + (len(json.loads(manifest.read_text())["entries"]) if manifest.exists() else 0)
