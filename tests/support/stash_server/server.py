"""Run a real Stash server in a temp folder for tests and the demo.

The harness talks to Stash with plain `requests`, not through the package under test,
so a bug in our client cannot hide itself."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import requests
import urllib3
import yaml

# The harness talks to its own throwaway servers, some with self-signed certificates.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

START_TIMEOUT = 90


class StashServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class StashServer:
    binary: Path
    root: Path
    version: str
    blobs_storage: str = "FILESYSTEM"
    port: int = field(default_factory=free_port)
    api_key: Optional[str] = None
    process: Optional[subprocess.Popen] = None
    extra_config: dict = field(default_factory=dict)
    # Serve https with a self-signed certificate named for another host, as a user's
    # stash.crt usually is: clients on 127.0.0.1 cannot check it by name. "chain": a
    # leaf signed by a CA of its own, both in ssl_cert_path, as an exported PEM with
    # text before each certificate ("Bag Attributes", which Go skips).
    tls: bool | str = False
    # Stash's `host` setting. Stash joins it with ":port" as it is, so an IPv6 bind
    # address is written in brackets ("[::]"), and the plugin is handed it so.
    host: str = "127.0.0.1"
    # After enable_login: the harness's own logged-in browser (no API key exists).
    browser: Optional[requests.Session] = None
    # Name the config file in STASH_CONFIG_FILE instead of --config (the official Docker
    # image and many systemd units do), and run from this folder instead of the root.
    config_via_env: bool = False
    working_dir: Optional[Path] = None
    # Added to Stash's environment, which its plugin processes inherit.
    env: dict = field(default_factory=dict)

    # --- layout -------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def database(self) -> Path:
        return self.root / "stash-go.sqlite"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def log_path(self) -> Path:
        return self.root / "stash.log"

    @property
    def url(self) -> str:
        loopback = "[::1]" if self.host.startswith("[") else "127.0.0.1"
        return f"{'https' if self.tls else 'http'}://{loopback}:{self.port}"

    @property
    def tls_folder(self) -> Path:
        return self.root / "tls"

    def _make_certificate(self) -> None:
        if self.tls == "chain":
            return self._make_certificate_chain()
        if (self.root / "stash.crt").exists():
            return
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=stash.example.org",
                "-keyout",
                str(self.root / "stash.key"),
                "-out",
                str(self.root / "stash.crt"),
                "-days",
                "3",
            ],
            check=True,
            capture_output=True,
        )

    def _make_certificate_chain(self) -> None:
        folder = self.tls_folder
        if (folder / "fullchain.pem").exists():
            return
        folder.mkdir(parents=True, exist_ok=True)

        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=Test CA",
            "-keyout",
            str(folder / "ca.key"),
            "-out",
            str(folder / "ca.crt"),
            "-days",
            "3",
        )
        openssl(
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=stash.example.org",
            "-keyout",
            str(folder / "privkey.pem"),
            "-out",
            str(folder / "leaf.csr"),
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(folder / "leaf.csr"),
            "-CA",
            str(folder / "ca.crt"),
            "-CAkey",
            str(folder / "ca.key"),
            "-CAcreateserial",
            "-out",
            str(folder / "leaf.crt"),
            "-days",
            "3",
        )
        (folder / "fullchain.pem").write_text(
            "".join(
                f"Bag Attributes\n    friendlyName: {name}\nsubject=/CN={name}\n" + (folder / f"{name}.crt").read_text()
                for name in ("leaf", "ca")
            )
        )

    def write_config(self) -> None:
        for folder in (self.root, self.blobs, self.backups, self.plugins, self.generated, self.root / "cache"):
            folder.mkdir(parents=True, exist_ok=True)
        config = {}
        if self.config_path.exists():
            config = yaml.safe_load(self.config_path.read_text()) or {}
        config.update(
            {
                "database": str(self.database),
                "generated": str(self.generated),
                "cache": str(self.root / "cache"),
                "blobs_path": str(self.blobs),
                "blobs_storage": self.blobs_storage,
                "backup_directory_path": str(self.backups),
                "plugins_path": str(self.plugins),
                "scrapers_path": str(self.root / "scrapers"),
                "host": self.host,
                "port": self.port,
                "python_path": sys.executable,
                "logFile": str(self.root / "stash-file.log"),
                "logLevel": "Debug",
                "nobrowser": True,
                "stash": [],
            }
        )
        if self.tls == "chain":
            config.update(
                {
                    "ssl_cert_path": str(self.tls_folder / "fullchain.pem"),
                    "ssl_key_path": str(self.tls_folder / "privkey.pem"),
                }
            )
        config.update(self.extra_config)
        self.config_path.write_text(yaml.safe_dump(config))

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> "StashServer":
        if self.process and self.process.poll() is None:
            return self
        self.write_config()
        if self.tls:
            self._make_certificate()
        log = open(self.log_path, "ab")
        env = dict(os.environ, **self.env)
        if self.config_via_env:
            command = [str(self.binary), "--nobrowser"]
            env["STASH_CONFIG_FILE"] = str(self.config_path)
        else:
            command = [str(self.binary), "--config", str(self.config_path), "--nobrowser"]
        self.process = subprocess.Popen(
            command,
            cwd=self.working_dir or self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StashServerError(
                    f"Stash {self.version} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}/healthz", timeout=2, verify=False).ok:
                    status = self.graphql("{ systemStatus { status } }")["systemStatus"]["status"]
                    if status == "OK":
                        return
                    last = f"status {status}"
            except (requests.RequestException, StashServerError) as error:
                last = str(error)
            time.sleep(0.2)
        raise StashServerError(f"Stash {self.version} not ready after {START_TIMEOUT} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    @property
    def running(self) -> bool:
        return bool(self.process) and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- GraphQL ------------------------------------------------------------
    def graphql(
        self, query: str, variables: Optional[dict] = None, api_key: Optional[str] = "default", timeout: float = 120
    ) -> dict:
        key = self.api_key if api_key == "default" else api_key
        headers = {"ApiKey": key} if key else {}
        client = self.browser or requests
        response = client.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers=headers,
            timeout=timeout,
            verify=False,
        )
        if response.status_code != 200:
            raise StashServerError(f"HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        if body.get("errors"):
            raise StashServerError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def enable_credentials(self, username: str = "admin", password: str = "s3cret-pass") -> str:
        """Set a login (Stash stores its bcrypt hash) and generate an API key, as a user
        does on the Security settings page. Returns the key."""
        self.graphql(
            "mutation($u: String!, $p: String!) { configureGeneral(input: {username: $u, password: $p}) { username } }",
            {"u": username, "p": password},
        )
        # From now on every request needs credentials: log in for a session cookie,
        # then ask for the key with it.
        with requests.Session() as browser:
            browser.verify = False
            login = browser.post(
                f"{self.url}/login",
                data={"username": username, "password": password},
                allow_redirects=False,
                timeout=30,
            )
            if "session" not in browser.cookies:
                raise StashServerError(f"login failed: HTTP {login.status_code}")
            response = browser.post(
                f"{self.url}/graphql", json={"query": "mutation { generateAPIKey(input: {}) }"}, timeout=30
            )
            self.api_key = response.json()["data"]["generateAPIKey"]
        return self.api_key

    def enable_login(self, username: str = "admin", password: str = "s3cret-pass") -> None:
        """Set a login and no API key, as many users have it: the harness then talks
        through a logged-in browser session, and a plugin gets only Stash's session cookie."""
        self.graphql(
            "mutation($u: String!, $p: String!) { configureGeneral(input: {username: $u, password: $p}) { username } }",
            {"u": username, "p": password},
        )
        browser = requests.Session()
        browser.verify = False
        login = browser.post(
            f"{self.url}/login", data={"username": username, "password": password}, allow_redirects=False, timeout=30
        )
        if "session" not in browser.cookies:
            raise StashServerError(f"login failed: HTTP {login.status_code}")
        self.browser = browser

    def reload_plugins(self) -> None:
        self.graphql("mutation { reloadPlugins }")

    def run_plugin_task(self, plugin_id: str, task: str, args: Optional[dict] = None, timeout: float = 300) -> dict:
        """Queue a plugin task and wait for its job to end; returns the job."""
        variables = {"id": plugin_id, "task": task, "args": args or {}}
        job_id = self.graphql(
            "mutation($id: ID!, $task: String!, $args: Map) { runPluginTask(plugin_id: $id, task_name: $task, args_map: $args) }",
            variables,
        )["runPluginTask"]
        return self.wait_for_job(job_id, timeout, f"plugin task {task!r}")

    def wait_for_job(self, job_id: str, timeout: float = 300, what: str = "job") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.graphql(
                "query($id: ID!) { findJob(input: {id: $id}) { id status description error progress "
                "startTime endTime } }",
                {"id": job_id},
            )["findJob"]
            if job is None or job["status"] in ("FINISHED", "CANCELLED", "FAILED"):
                return job or {"id": job_id, "status": "GONE"}
            time.sleep(0.2)
        raise StashServerError(f"{what} did not finish within {timeout} s")

    def scan(self, folder: Path, timeout: float = 3600) -> float:
        """Stash's own scan of `folder` (metadataScan, waited for); the seconds it took."""
        started = time.monotonic()
        job_id = self.graphql("mutation($p: [String!]) { metadataScan(input: {paths: $p}) }", {"p": [str(folder)]})[
            "metadataScan"
        ]
        job = self.wait_for_job(job_id, timeout, "scan")
        if job["status"] != "FINISHED":
            raise StashServerError(f"scan of {folder} ended {job['status']}: {job.get('error')}\n{self.log_tail()}")
        return time.monotonic() - started

    def logs(self) -> list[dict]:
        return self.graphql("{ logs { time level message } }")["logs"]


# --- sample content ---------------------------------------------------------------


def move_library(old: Path, new: Path, how: str) -> None:
    """Move a library folder as users do: "renamed" keeps the files' modification times
    (mv, rsync -a, cp -a); "copied" gives them new ones (a plain cp, many NAS and
    Windows copies)."""
    new.parent.mkdir(parents=True, exist_ok=True)
    if how == "renamed":
        old.rename(new)
    else:
        shutil.copytree(old, new, copy_function=shutil.copy)
        shutil.rmtree(old)


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A small valid PNG whose pixels depend on `seed`, so every image is unique."""
    raw = b"".join(
        b"\x00"
        + b"".join(
            bytes(((x * 7 + y * 13 + seed * 31) % 256, (seed * 17 + x) % 256, (x * y + seed) % 256))
            for x in range(size)
        )
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def seed_content(server: StashServer, performers: int = 3, prefix: str = "") -> dict:
    """Create tags, a studio and performers with images through GraphQL, as a user
    would. Returns what was created, with each performer's image bytes."""
    created = {"tags": [], "studios": [], "performers": []}
    for index in range(2):
        tag = server.graphql(
            "mutation($i: TagCreateInput!) { tagCreate(input: $i) { id name } }",
            {"i": {"name": f"{prefix}tag-{index}", "image": data_url(png_bytes(1000 + index))}},
        )["tagCreate"]
        created["tags"].append(tag)
    studio = server.graphql(
        "mutation($i: StudioCreateInput!) { studioCreate(input: $i) { id name } }",
        {"i": {"name": f"{prefix}studio", "image": data_url(png_bytes(2000))}},
    )["studioCreate"]
    created["studios"].append(studio)
    for index in range(performers):
        image = png_bytes(3000 + index + len(prefix) * 100)
        performer = server.graphql(
            "mutation($i: PerformerCreateInput!) { performerCreate(input: $i) { id name } }",
            {
                "i": {
                    "name": f"{prefix}performer-{index}",
                    "image": data_url(image),
                    "tag_ids": [created["tags"][0]["id"]],
                }
            },
        )["performerCreate"]
        performer["image"] = image
        created["performers"].append(performer)
    return created


def performer_image(server: StashServer, performer_id: str) -> bytes:
    headers = {"ApiKey": server.api_key} if server.api_key else {}
    response = requests.get(f"{server.url}/performer/{performer_id}/image", headers=headers, timeout=30, verify=False)
    response.raise_for_status()
    return response.content


def content_names(server: StashServer) -> dict:
    """What a user sees: names of tags, studios and performers, sorted."""
    data = server.graphql("""{ allTags: findTags(filter: {per_page: -1}) { tags { name } }
        allStudios: findStudios(filter: {per_page: -1}) { studios { name } }
        allPerformers: findPerformers(filter: {per_page: -1}) { performers { id name } } }""")
    return {
        "tags": sorted(t["name"] for t in data["allTags"]["tags"]),
        "studios": sorted(s["name"] for s in data["allStudios"]["studios"]),
        "performers": sorted(p["name"] for p in data["allPerformers"]["performers"]),
    }
