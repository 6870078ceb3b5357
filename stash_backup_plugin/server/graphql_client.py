"""The few GraphQL calls we make to Stash, through gql and its requests transport.
Transport and GraphQL failures become typed errors with one-line messages."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import requests
from gql import Client, gql
from gql.transport.exceptions import (TransportProtocolError, TransportQueryError,
                                      TransportServerError)
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
from ..core.errors import AuthError, ServerError
from .http_session import harden, new_session

TIMEOUT_SECONDS = 60
# VACUUM INTO of a multi-GiB database (and zipping blobs on v0.31) takes minutes.
BACKUP_TIMEOUT_SECONDS = 6 * 3600


_SERVER_INFO = gql("""
query StashBackupServerInfo {
  version { version }
  systemStatus { databaseSchema databasePath configPath status }
  configuration { general { backupDirectoryPath blobsPath blobsStorage databasePath } }
  backupInput: __type(name: "BackupDatabaseInput") { inputFields { name } }
}
""")
_BACKUP = gql("mutation StashBackup($input: BackupDatabaseInput!) { backupDatabase(input: $input) }")
_PLUGIN_SETTINGS = gql("query StashBackupSettings($ids: [ID!]) "
                       "{ configuration { general { apiKey } plugins(include: $ids) } }")
_RELOAD_PLUGINS = gql("mutation { reloadPlugins }")
_QUEUE_PLUGIN_TASK = gql("mutation StashBackupQueue($id: ID!, $args: Map, $description: String) "
                         "{ runPluginTask(plugin_id: $id, args_map: $args, description: $description) }")


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
            transport = RequestsHTTPTransport(url=self.connection.graphql_url, timeout=self._timeout,
                                              verify=not self.connection.pinned_certificate)
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
            raise ServerError(self._clean(
                f"{self.connection.base_url} did not answer like a Stash GraphQL server ({error}): check the URL")) from None
        except (requests.exceptions.RequestException, _ConnectionFailed) as error:
            # gql 4 wraps the requests error; gql 3 lets it through
            raise self._connection_error(error.__cause__ or error, transport.timeout) from None

    def _connection_error(self, cause: BaseException, timeout) -> ServerError:
        base = self.connection.base_url
        if isinstance(cause, requests.exceptions.SSLError):
            return ServerError(f"TLS to {base} failed ({type(cause).__name__}): check the URL or certificate")
        if isinstance(cause, requests.exceptions.Timeout):
            return ServerError(f"Stash at {base} did not answer within {timeout} s")
        return ServerError(f"cannot reach Stash at {base}: is it running, and is the URL right?")

    def _server_error(self, code: Optional[int], text: str) -> ServerError:
        if code in (401, 403):
            return AuthError(f"Stash at {self.connection.base_url} refused the request ({code}) with "
                             f"{self.connection.auth_description}: give a valid API key (--api-key or STASH_API_KEY)")
        return ServerError(self._clean(f"Stash at {self.connection.base_url} answered HTTP {code}: {text[:200]}"))

    def _clean(self, text: str) -> str:
        return redact(text, self.connection.secrets())

    # --- the calls -------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        data = self.execute(_SERVER_INFO)
        general = data["configuration"]["general"]
        status = data["systemStatus"]
        fields = {f["name"] for f in ((data.get("backupInput") or {}).get("inputFields") or [])}
        return ServerInfo(
            version=(data.get("version") or {}).get("version"),
            schema_version=status.get("databaseSchema"),
            database_path=general.get("databasePath") or status.get("databasePath"),
            backup_directory=general.get("backupDirectoryPath"),
            blobs_path=general.get("blobsPath"),
            blobs_storage=general.get("blobsStorage"),
            supports_include_blobs="includeBlobs" in fields,
            extra_blob_paths=extra_blob_paths(status.get("configPath")),
        )

    def backup_database(self, download: bool, include_blobs: Optional[bool] = None) -> Optional[str]:
        """Run `backupDatabase`; `include_blobs` is sent only when not None (older
        servers reject the unknown field). Returns the download link, if any."""
        backup_input: dict[str, Any] = {"download": download}
        if include_blobs is not None:
            backup_input["includeBlobs"] = include_blobs
        data = self.execute(_BACKUP, {"input": backup_input}, timeout=BACKUP_TIMEOUT_SECONDS)
        return data.get("backupDatabase")

    def fetch_backup(self, link: str, folder: Path, final_name: str,
                     progress: Optional[Callable[[int, Optional[int]], None]] = None, tee=None,
                     durable: bool = True) -> Downloaded:
        """The link is fetched from our own URL, never from the host Stash wrote
        into it (external_host): credentials go to no other host."""
        from .download import download
        if self._downloads is None:
            self._downloads = new_session(self.connection)
        return download(self._downloads, self.connection.rebase(link), folder, final_name, progress=progress, tee=tee,
                        durable=durable)

    def plugin_settings_and_api_key(self, plugin_id: str) -> tuple[dict, Optional[str]]:
        """A plugin's settings, and Stash's API key when it has one (empty when no
        credentials are set). A plugin asks with the session cookie Stash gave it."""
        data = self.execute(_PLUGIN_SETTINGS, {"ids": [plugin_id]})
        plugins = data["configuration"].get("plugins") or {}
        api_key = ((data["configuration"].get("general") or {}).get("apiKey")) or None
        return dict(plugins.get(plugin_id) or {}), api_key

    def reload_plugins(self) -> None:
        self.execute(_RELOAD_PLUGINS)

    def queue_plugin_task(self, plugin_id: str, args: dict, description: str) -> str:
        """Queue our plugin with these args in Stash's job queue; returns the job ID."""
        data = self.execute(_QUEUE_PLUGIN_TASK, {"id": plugin_id, "args": args, "description": description})
        return str(data["runPluginTask"])


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
            return _yaml_list(key.group(2), lines[index + 1:], len(key.group(1)))
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


def _first_message(error: TransportQueryError) -> str:
    errors = error.errors or []
    if errors and isinstance(errors[0], dict):
        return str(errors[0].get("message", errors[0]))
    return str(error) if not errors else json.dumps(errors[0])[:300]
