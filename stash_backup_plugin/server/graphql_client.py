"""The few GraphQL calls we make to Stash, through gql and its requests transport.
Transport and GraphQL failures become typed errors with one-line messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import requests
from gql import Client, gql
from gql.transport.exceptions import TransportProtocolError, TransportQueryError, TransportServerError
from gql.transport.requests import RequestsHTTPTransport

try:
    from gql import GraphQLRequest
except ImportError:  # gql 3 passes variables to execute() instead
    GraphQLRequest = None

try:
    from gql.transport.exceptions import TransportConnectionFailed as _ConnectionFailed
except ImportError:  # gql 3

    class _ConnectionFailed(Exception):
        pass


from .api import Downloaded, ServerInfo
from .connection import Connection, redact
from ..core.bounded import one_line
from ..core.library import FINGERPRINT_QUERY, Fingerprint, UnexpectedAnswer, from_answer
from ..core.errors import AuthError, ServerError, StashBackupError
from .http_session import harden, new_session

TIMEOUT_SECONDS = 60
# VACUUM INTO of a multi-GiB database (and zipping blobs on v0.31) takes minutes.
BACKUP_TIMEOUT_SECONDS = 6 * 3600


_SERVER_INFO = gql("""
query StashBackupServerInfo {
  version { version }
  systemStatus { databaseSchema databasePath configPath status }
  configuration {
    general {
      backupDirectoryPath blobsPath blobsStorage databasePath
      generatedPath cachePath metadataPath scrapersPath pluginsPath logFile ffmpegPath ffprobePath
    }
  }
  backupInput: __type(name: "BackupDatabaseInput") { inputFields { name } }
}
""")
# settings.sources_for's keys: the paths Stash's config names, as the server reports them.
_SETTING_PATHS = {
    "generated": "generatedPath",
    "cache": "cachePath",
    "metadata": "metadataPath",
    "scrapers": "scrapersPath",
    "plugins": "pluginsPath",
    "log_file": "logFile",
    "ffmpeg": "ffmpegPath",
    "ffprobe": "ffprobePath",
}
_FINGERPRINT = gql(FINGERPRINT_QUERY)
_BACKUP = gql("mutation StashBackup($input: BackupDatabaseInput!) { backupDatabase(input: $input) }")
_PLUGIN_SETTINGS = gql(
    "query StashBackupSettings($ids: [ID!]) { configuration { general { apiKey } plugins(include: $ids) } }"
)
_RELOAD_PLUGINS = gql("mutation { reloadPlugins }")
_QUEUE_PLUGIN_TASK = gql(
    "mutation StashBackupQueue($id: ID!, $args: Map, $description: String) "
    "{ runPluginTask(plugin_id: $id, args_map: $args, description: $description) }"
)


class StashClient:
    def __init__(self, connection: Connection, timeout: int = TIMEOUT_SECONDS):
        self.connection = connection
        self._timeout = timeout
        self._client: Optional[Client] = None
        self._session = None
        self._downloads: Optional[requests.Session] = None

    def __enter__(self) -> "StashClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close_sync()
            self._client = None
        if self._downloads is not None:
            self._downloads.close()
            self._downloads = None

    def _connected(self):
        if self._client is None:
            transport = RequestsHTTPTransport(
                url=self.connection.graphql_url,
                timeout=self._timeout,
                verify=not self.connection.pinned_certificate,
                json_deserialize=_graphql_answer,
            )
            self._client = Client(transport=transport, fetch_schema_from_transport=False)
            self._session = self._client.connect_sync()
            harden(transport.session, self.connection)
        return self._session

    def execute(self, document, variables: Optional[dict] = None, timeout: Optional[int] = None) -> dict:
        session = self._connected()
        transport = session.transport
        transport.default_timeout = transport.timeout = timeout or self._timeout
        try:
            if GraphQLRequest is None:  # gql 3
                return session.execute(document, variable_values=variables)
            return session.execute(GraphQLRequest(document, variable_values=variables))
        except TransportServerError as error:
            raise self._server_error(getattr(error, "code", None), str(error)) from None
        except TransportQueryError as error:
            raise ServerError(self._clean(f"Stash answered with an error: {_first_message(error)}")) from None
        except TransportProtocolError as error:
            raise ServerError(
                self._clean(
                    f"{self.connection.base_url} did not answer like a Stash GraphQL server "
                    f"({one_line(str(error))}): check the URL"
                )
            ) from None
        except (requests.exceptions.RequestException, _ConnectionFailed) as error:
            # gql 4 wraps the requests error; gql 3 lets it through
            raise self._connection_error(error.__cause__ or error, transport.timeout) from None

    def _connection_error(self, cause: BaseException, timeout) -> StashBackupError:
        base = self.connection.base_url
        if isinstance(cause, StashBackupError):
            return cause  # the answer itself was refused (too large): http_session's own words
        if isinstance(cause, requests.exceptions.SSLError):
            return ServerError(f"TLS to {base} failed ({type(cause).__name__}): check the URL or certificate")
        if isinstance(cause, requests.exceptions.Timeout):
            return ServerError(f"Stash at {base} did not answer within {timeout} s")
        return ServerError(f"cannot reach Stash at {base}: is it running, and is the URL right?")

    def _server_error(self, code: Optional[int], text: str) -> ServerError:
        if code in (401, 403):
            return AuthError(
                f"Stash at {self.connection.base_url} refused the request ({code}) with "
                f"{self.connection.auth_description}: give a valid API key (--api-key or STASH_API_KEY)"
            )
        return ServerError(self._clean(f"Stash at {self.connection.base_url} answered HTTP {code}: {one_line(text)}"))

    def _clean(self, text: str) -> str:
        return redact(text, self.connection.secrets())

    def _part(self, data: dict, key: str, kind, optional: bool = False):
        """data[key], checked to be a `kind` (None when absent and `optional`): an
        answer of another shape is one line, never a KeyError."""
        value = data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        raise ServerError(
            self._clean(
                f"Stash at {self.connection.base_url} answered with {key!r} "
                f"{one_line(json.dumps(value), 60)}, not what this tool knows: check the URL "
                "and that this Stash is a version this tool supports"
            )
        )

    # --- the calls -------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        data = self.execute(_SERVER_INFO)
        general = self._part(self._part(data, "configuration", dict), "general", dict)
        status = self._part(data, "systemStatus", dict)
        backup_input = self._part(data, "backupInput", dict, optional=True) or {}
        fields = {
            f.get("name")
            for f in self._part(backup_input, "inputFields", list, optional=True) or []
            if isinstance(f, dict)
        }

        def text(part: dict, key: str) -> Optional[str]:
            return self._part(part, key, str, optional=True)

        return ServerInfo(
            version=text(self._part(data, "version", dict, optional=True) or {}, "version"),
            schema_version=self._part(status, "databaseSchema", int, optional=True),
            database_path=text(general, "databasePath") or text(status, "databasePath"),
            backup_directory=text(general, "backupDirectoryPath"),
            blobs_path=text(general, "blobsPath"),
            blobs_storage=text(general, "blobsStorage"),
            supports_include_blobs="includeBlobs" in fields,
            extra_blob_paths=extra_blob_paths(text(status, "configPath")),
            config_path=text(status, "configPath"),
            setting_paths={key: text(general, field) for key, field in _SETTING_PATHS.items()},
        )

    def backup_database(self, download: bool, include_blobs: Optional[bool] = None) -> Optional[str]:
        """Run `backupDatabase`; `include_blobs` is sent only when not None (older
        servers reject the unknown field). Returns the download link, if any."""
        backup_input: dict[str, Any] = {"download": download}
        if include_blobs is not None:
            backup_input["includeBlobs"] = include_blobs
        data = self.execute(_BACKUP, {"input": backup_input}, timeout=BACKUP_TIMEOUT_SECONDS)
        return self._part(data, "backupDatabase", str, optional=True)

    def library_fingerprint(self) -> Fingerprint:
        data = self.execute(_FINGERPRINT)
        try:
            return from_answer(data)
        except UnexpectedAnswer as error:
            raise ServerError(
                self._clean(f"Stash at {self.connection.base_url} answered the library query unexpectedly: {error}")
            ) from None

    def fetch_backup(
        self,
        link: str,
        folder: Path,
        final_name: str,
        progress: Optional[Callable[[int, Optional[int]], None]] = None,
        durable: bool = True,
    ) -> Downloaded:
        """The link is fetched from our own URL, never from the host Stash wrote
        into it (external_host): credentials go to no other host."""
        from .download import download

        if self._downloads is None:
            self._downloads = new_session(self.connection)
        return download(
            self._downloads,
            self.connection.rebase(link),
            folder,
            final_name,
            progress=progress,
            durable=durable,
        )

    def plugin_settings_and_api_key(self, plugin_id: str) -> tuple[dict, Optional[str]]:
        """A plugin's settings, and Stash's API key when it has one (empty when no
        credentials are set). A plugin asks with the session cookie Stash gave it."""
        data = self.execute(_PLUGIN_SETTINGS, {"ids": [plugin_id]})
        configuration = self._part(data, "configuration", dict)
        plugins = self._part(configuration, "plugins", dict, optional=True) or {}
        general = self._part(configuration, "general", dict, optional=True) or {}
        api_key = self._part(general, "apiKey", str, optional=True) or None
        return dict(self._part(plugins, plugin_id, dict, optional=True) or {}), api_key

    def reload_plugins(self) -> None:
        self.execute(_RELOAD_PLUGINS)

    def queue_plugin_task(self, plugin_id: str, args: dict, description: str) -> str:
        """Queue our plugin with these args in Stash's job queue; returns the job ID."""
        data = self.execute(_QUEUE_PLUGIN_TASK, {"id": plugin_id, "args": args, "description": description})
        return str(self._part(data, "runPluginTask", (str, int)))


def extra_blob_paths(config_path: Optional[str]) -> tuple:
    """Stash v0.31's developer_options.extra_blob_paths, read from its config.yml when
    that file is readable from here (the plugin, a CLI on Stash's host); else none."""
    if not config_path:
        return ()
    try:
        with open(config_path, encoding="utf-8") as handle:
            return extra_blob_paths_in(handle.read())
    except (OSError, UnicodeDecodeError):
        return ()  # not readable here: it tells us nothing about blobs


def extra_blob_paths_in(text: str) -> tuple:
    """The list under `developer_options:` / `extra_blob_paths:`, read without a YAML
    parser (Stash's Python may have none) in the block style Go's yaml writes:

        developer_options:
          extra_blob_paths:
          - /some/folder
          - "/another folder"

    or as a flow list `[a, b]`. Anything else gives no path: a developer option, and a
    folder missed here only means its blobs are taken from v0.31's zip or reported missing."""
    lines = text.splitlines()
    section = next((i for i, line in enumerate(lines) if re.match(r"developer_options\s*:\s*(#.*)?$", line)), None)
    if section is None:
        return ()
    for index in range(section + 1, len(lines)):
        line = lines[index]
        if line.strip() and not line[0].isspace():
            return ()  # the next top-level key: not in this section
        key = re.match(r"(\s+)extra_blob_paths\s*:\s*(.*?)\s*$", line)
        if key:
            return _yaml_list(key.group(2), lines[index + 1 :], len(key.group(1)))
    return ()


def _yaml_list(inline: str, following: list[str], indent: int) -> tuple:
    if inline.startswith("["):
        flow = re.match(r"\[(.*)\]\s*(#.*)?$", inline)
        items = flow.group(1).split(",") if flow else []
    elif inline and not inline.startswith("#"):
        return ()
    else:
        items = []
        for line in following:
            item = re.match(r"(\s*)- (.*)$", line)
            if not item or len(item.group(1)) < indent:
                break
            items.append(item.group(2))
    paths = [_yaml_scalar(item.strip()) for item in items if item.strip()]
    return tuple(path for path in paths if path)


def _yaml_scalar(value: str) -> str:
    if value[:1] in ("'", '"'):
        quoted = re.match(r"(['\"])(.*)\1\s*(#.*)?$", value)
        return quoted.group(2).replace("''", "'") if quoted else ""
    if value[:1] in "|>&*!{[%@`#":
        return ""
    return re.split(r"\s+#", value, maxsplit=1)[0]


def _graphql_answer(text: str) -> dict:
    """gql's JSON reader: only an object with `data` or `errors` is an answer (gql
    reports anything else as "not a GraphQL result" instead of failing on it later)."""
    answer = json.loads(text)
    if not isinstance(answer, dict) or not (isinstance(answer.get("data"), dict) or answer.get("errors")):
        raise ValueError("not a GraphQL answer")
    return answer


def _first_message(error: TransportQueryError) -> str:
    errors = error.errors
    first = errors[0] if isinstance(errors, list) and errors else errors
    if isinstance(first, dict) and "message" in first:
        return one_line(str(first["message"]), 300)
    return one_line(str(error) if first is None else json.dumps(first, default=str), 300)
