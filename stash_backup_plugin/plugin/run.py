"""The plugin: Stash runs it for a task from the Tasks page. It reads the task and
the server connection from stdin, finds its own ID and settings, runs the job and
answers on stdout. Errors are logged at error level too: a returned error alone
does not fail Stash's job."""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from .. import jobs
from ..core.archive import DEFAULT_FOLDER_NAME, Archive
from ..server.connection import from_plugin_input, redact
from ..core.errors import ConfigError, StashBackupError, UsageError
from ..server.graphql_client import StashClient
from .protocol import PluginLogReporter, encode_output, read_input
from ..core.retention import Policy, parse_duration
from ..core.sqlite_check import FULL, QUICK

MODES = ("backup", "download", "verify", "retention")


@dataclass
class Settings:
    archive_folder: Path
    include_blobs: bool = True
    check_level: str = QUICK
    policy: Policy = Policy()
    retention_dry_run: bool = False


def _as_bool(value, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _as_count(name: str, value) -> int:
    if value is None or value == "":
        return 0
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name} is {value!r}: use a whole number (or -1 for unlimited)") from None


def settings_from(values: dict, config_dir: Path) -> Settings:
    """Settings with defaults for what the user never set (Stash omits unset ones)."""
    folder = values.get("archiveFolder") or ""
    within = (values.get("keepWithin") or "").strip()
    policy = Policy(
        last=_as_count("keepLast", values.get("keepLast")),
        hourly=_as_count("keepHourly", values.get("keepHourly")),
        daily=_as_count("keepDaily", values.get("keepDaily")),
        weekly=_as_count("keepWeekly", values.get("keepWeekly")),
        monthly=_as_count("keepMonthly", values.get("keepMonthly")),
        yearly=_as_count("keepYearly", values.get("keepYearly")),
        within=parse_duration(within) if within else None,
    )
    return Settings(
        archive_folder=Path(folder).expanduser() if folder else config_dir / DEFAULT_FOLDER_NAME,
        include_blobs=_as_bool(values.get("includeBlobs"), True),
        check_level=FULL if _as_bool(values.get("fullIntegrityCheck"), False) else QUICK,
        policy=policy,
        retention_dry_run=_as_bool(values.get("retentionDryRun"), False),
    )


def plugin_id(plugin_dir: Path) -> str:
    """Our ID is our manifest's file name, whatever the user installed it as."""
    manifests = sorted(plugin_dir.glob("*.yml"))
    ours = [m for m in manifests if "stash_backup_plugin" in m.read_text(errors="replace")]
    chosen = ours or manifests
    if not chosen:
        raise ConfigError(f"no plugin manifest (*.yml) found in {plugin_dir}: reinstall the plugin")
    return chosen[0].stem


def config_line_value(text: str, key: str) -> Optional[str]:
    """The value of one top-level `key: value` line of config.yml, read without a YAML
    parser (Stash's Python may have none). Stash writes config.yml with Go's yaml: one
    top-level key per line at column 0, a path as a plain, 'single' or "double" quoted
    scalar. Anything else (block, flow, anchor, alias, tag) gives None. A misread can
    only pin a certificate the server does not present, which refuses the connection;
    it never makes another server trusted."""
    for line in text.splitlines():
        match = re.match(rf"{re.escape(key)}[ \t]*:(?:[ \t]+(.*))?$", line)
        if not match:
            continue
        value = (match.group(1) or "").strip()
        if value.startswith("'"):
            quoted = re.match(r"'((?:[^']|'')*)'\s*(#.*)?$", value)
            return quoted.group(1).replace("''", "'") if quoted else None
        if value.startswith('"'):
            quoted = re.match(r'("(?:[^"\\]|\\.)*")\s*(#.*)?$', value)
            try:
                return json.loads(quoted.group(1)) if quoted else None
            except ValueError:  # a YAML escape JSON lacks
                return None
        if not value or value[0] in "|>&*!{[%@`#":
            return None
        return re.split(r"\s+#", value, maxsplit=1)[0]
    return None


def _certificate(config_dir: Optional[str]) -> Optional[Path]:
    """Where Stash finds its TLS certificate (Config.InitTLS): ssl_cert_path in
    config.yml, else stash.crt in its config folder, else in ~/.stash. Stash does not
    tell it over GraphQL, and GraphQL over https needs it first."""
    folder = Path(config_dir or ".")
    try:
        configured = config_line_value((folder / "config.yml").read_text(errors="replace"), "ssl_cert_path")
    except OSError:
        configured = None
    if configured:
        return Path(configured)
    for candidate in (folder, Path.home() / ".stash"):
        if (candidate / "stash.crt").is_file():
            return candidate / "stash.crt"
    return None


def run_task(payload: dict, reporter: PluginLogReporter, secrets: Optional[list] = None) -> str:
    """`secrets` receives what must never be logged (the API key read from Stash)."""
    secrets = [] if secrets is None else secrets
    server = payload.get("server_connection") or {}
    args = payload.get("args") or {}
    mode = str(args.get("mode", "")).strip()
    if mode not in MODES:
        raise UsageError(f"unknown task mode {mode!r}: the plugin manifest must set mode to one of {', '.join(MODES)}")
    https = server.get("Scheme") == "https"
    connection = from_plugin_input(server, None, _certificate(server.get("Dir")) if https else None)
    with StashClient(connection) as client:
        values, api_key = client.plugin_settings_and_api_key(plugin_id(Path(server.get("PluginDir") or ".")))
    if api_key:  # it does not expire like the session cookie, which a long backup can outlive
        secrets.append(api_key)
        connection = replace(connection, api_key=api_key)
    values.update({k: v for k, v in args.items() if k != "mode"})
    settings = settings_from(values, Path(server.get("Dir") or "."))
    with StashClient(connection) as client:
        return _run_mode(mode, client, settings, reporter)


def _run_mode(mode: str, client: StashClient, settings: Settings, reporter: PluginLogReporter) -> str:
    archive = Archive(settings.archive_folder)
    if mode == "backup":
        made = jobs.backup_on_server(client, settings.include_blobs, reporter)
        return f"Backup written to {made.path or 'the backup folder'}"
    if mode == "download":
        options = jobs.DownloadOptions(include_blobs=settings.include_blobs, check_level=settings.check_level)
        outcome = jobs.download_to_archive(client, archive, options, reporter)
        return f"Archived {outcome.entry.file} in {archive.folder}" if outcome.entry else outcome.skipped_reason
    if mode == "verify":
        summary = jobs.verify_archive(archive, settings.check_level, reporter)
        if not summary.ok:
            raise StashBackupError(summary.line())
        return summary.line()
    if settings.policy.is_empty():
        reporter.info("No retention rule is set (Keep last/hourly/daily/weekly/monthly/yearly/within): nothing removed")
    decisions = jobs.apply_retention(archive, settings.policy, settings.retention_dry_run, reporter)
    removed = sum(1 for d in decisions if not d.keep)
    return f"Retention: kept {len(decisions) - removed}, {'would remove' if settings.retention_dry_run else 'removed'} {removed}"


def main(stdin=None, stdout=None, stderr=None) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    secrets: list[str] = []
    reporter = PluginLogReporter(stderr, redact=lambda text: redact(text, secrets))
    try:
        payload = read_input(stdin)
        cookie = ((payload.get("server_connection") or {}).get("SessionCookie") or {}).get("Value")
        secrets.extend([cookie] if cookie else [])
        output = run_task(payload, reporter, secrets)
    except StashBackupError as error:
        message = redact(str(error), secrets)
        reporter.error(message)
        stdout.write(encode_output(error=message))
        return 0
    except ValueError as error:  # stdin was not JSON: run by hand, not by Stash
        message = f"the plugin expects Stash's task input as JSON on stdin ({error}); run it from Stash's Tasks page"
        reporter.error(message)
        stdout.write(encode_output(error=message))
        return 0
    stdout.write(encode_output(output=output))
    return 0
