"""Atomic writes: a unique temp file in the target folder, fsync, os.replace, fsync
the folder. A partial file never carries a final name; temp files left by a killed
run carry TEMP_MARKER and the run's PID, and are removed by a later run once that
process is gone (`remove_stale_temps`)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from .errors import StorageError
from .naming import TEMP_MARKER, temp_owner
from .processes import alive, dead_here, machine_id

# No run lives this long: a temp file or folder untouched for a day is abandoned, even
# when its maker cannot be asked (another host on a shared folder, another container).
RUN_LIMIT_SECONDS = 24 * 3600


def fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder for fsync; NTFS journals renames.
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(action: str, path: Path, error: OSError) -> StorageError:
    """Turn an OSError into a one-line message that says what to do."""
    hint = {
        errno.ENOSPC: "the disk is full: free space or choose another folder",
        errno.EDQUOT: "the disk quota is used up: free space or choose another folder",
        errno.EACCES: "permission denied: choose a folder this user can write to",
        errno.EPERM: "permission denied: choose a folder this user can write to",
        errno.EROFS: "the file system is read-only: choose another folder",
        errno.ENOENT: "the folder does not exist: create it or choose another",
    }.get(error.errno or -1, error.strerror or str(error))
    return StorageError(f"cannot {action} {path}: {hint}")


# Where the file system fixes owners by mount options (FAT, SMB and the like).
_NO_OWNERS_HERE = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


def take_parent_owner(path: Path) -> None:
    """Give a file or folder we just created the owner (user and group) of the folder
    it is in. Run as root, as a restore often is, it would be root's, and a Stash that
    runs as another user (Docker PUID, a systemd User=) could no longer write there.
    Only root can give files away; anyone else keeps what the system gave."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    parent = os.stat(Path(path).parent)
    give_owner(path, parent.st_uid, parent.st_gid)


def give_owner(path: Path, uid: int, gid: int) -> None:
    """As root, make `path` (not a link's target) belong to uid:gid; anyone else keeps
    what the system gave. Where the file system fixes owners by mount options (FAT, SMB
    and the like), there is nothing to give away: not an error."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    mine = os.lstat(path)
    if (mine.st_uid, mine.st_gid) == (uid, gid):
        return
    try:
        os.chown(path, uid, gid, follow_symlinks=False)
    except OSError as error:
        if error.errno not in _NO_OWNERS_HERE:
            raise


def existing_parent(path: Path) -> Path:
    """The path itself, or its nearest ancestor that exists (a folder not made yet is
    on the disk of the folder it will be made in)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_space(folder: Optional[Path]) -> Optional[int]:
    """Free bytes on the disk `folder` is (or will be) on; None when unknown."""
    try:
        return shutil.disk_usage(existing_parent(folder)).free if folder else None
    except OSError:
        return None


def write_all(handle, data: bytes) -> int:
    """Write every byte (a raw file's write may take only part); returns the length."""
    view = memoryview(data)
    while view:
        view = view[handle.write(view) :]
    return len(data)


def private_mode(parent: Path, folder: bool = False) -> int:
    """The mode of a file (or folder) we make in `parent`: its owner's alone (0600,
    0700), as restic and borg make theirs. Its group gets what `parent` gives it (read
    files; enter, list, and where granted add to folders) only where `parent` is shared
    with the group and closed to others: the owner's choice (chmod 750 or 770 on the
    archive, Stash's group in Docker), never a umask's default (a 755 home or config
    folder). Others: never. The owner is Stash's user where it matters: run as root
    we give what we make the folder's owner (take_parent_owner)."""
    return _private_mode_in(os.stat(parent).st_mode, folder)


def _private_mode_in(parent_mode: int, folder: bool) -> int:
    mode = stat.S_IMODE(parent_mode)
    shared = 0 if mode & 0o007 else mode & 0o070
    return (0o700 | shared) if folder else (0o600 | (shared & 0o040))


def own_like_folder(path: Path) -> None:
    """A file or folder we just made: private (private_mode of the folder it is in),
    owned like that folder (the plugin, as Stash's user, and a CLI run as root share
    the archive)."""
    os.chmod(path, private_mode(Path(path).parent, folder=os.path.isdir(path)))
    take_parent_owner(path)


class FilesLikeFolder:
    """Many files made in one folder (a night's images into incoming/), each as
    own_like_folder would leave it, with the folder asked once: the mode and owner
    are set on the open file, not looked up again by its path."""

    def __init__(self, folder: Path):
        info = os.stat(folder)
        self.folder, self.mode = Path(folder), _private_mode_in(info.st_mode, folder=False)
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.owner = (info.st_uid, info.st_gid) if root else None

    def create(self, name: str) -> BinaryIO:
        """A new (or emptied) file in the folder, open for writing."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.folder / name, flags, self.mode)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, self.mode)  # the umask may have taken the group's read
            if self.owner is not None:
                _give_open_file(fd, *self.owner)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "wb")


def _give_open_file(fd: int, uid: int, gid: int) -> None:
    try:
        os.fchown(fd, uid, gid)
    except OSError as error:
        if error.errno not in _NO_OWNERS_HERE:
            raise


def open_lock_file(path: Path, mode: str = "a+b"):
    """A lock file, made private if missing (anyone who can open it could flock it and
    hold every run up); "rb" only opens an existing one."""
    if "a" not in mode:
        return open(path, mode)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, private_mode(Path(path).parent))
    return os.fdopen(fd, mode)


def make_folders(folder: Path) -> None:
    """`mkdir -p`, where each folder made is private (private_mode) and takes the owner
    of the one it is in."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another run
        own_like_folder(each)


def temp_path_in(folder: Path, final_name: str) -> Path:
    """A new, unique, empty temp file beside where `final_name` will go, owned like
    the folder (the rename keeps that owner)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final_name}{TEMP_MARKER}{temp_owner_tag()}-", dir=folder)
    except OSError as error:
        raise storage_error("create a file in", folder, error) from error
    os.close(fd)
    try:
        take_parent_owner(Path(name))
    except OSError as error:
        discard(Path(name))
        raise storage_error("create a file in", folder, error) from error
    return Path(name)


@contextlib.contextmanager
def staged_file(
    folder: Path, final_name: str, buffering: int = -1, durable: bool = True
) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield (file, temp path): a unique temp file beside where `final_name` will go,
    fsynced when the block ends (unless not `durable`: a file only read, then
    discarded). On any failure it is removed; on success the caller checks it and then
    commits it (or discards it)."""
    temp = temp_path_in(folder, final_name)
    try:
        with open(temp, "r+b", buffering=buffering) as handle:
            yield handle, temp
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except OSError as error:
        discard(temp)
        raise storage_error("write", temp, error) from error
    except BaseException:
        discard(temp)
        raise


@contextlib.contextmanager
def atomic_output(final_path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield (file, temp path) to write; on success it is renamed into place, durably.
    On any failure the final path is untouched."""
    with staged_file(final_path.parent, final_path.name) as (handle, temp):
        yield handle, temp
    try:
        commit(temp, final_path)
    except OSError as error:
        discard(temp)
        raise storage_error("write", final_path, error) from error


def commit(temp: Path, final_path: Path) -> None:
    """Rename a fully written and fsynced temp file into place, durably."""
    os.replace(temp, final_path)
    fsync_dir(final_path.parent)


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_bytes_atomic(final_path: Path, data: bytes, mode: Optional[int] = None) -> None:
    """`mode`: default private_mode of the folder (a caller may narrow it, as 0600 for
    a file of secrets in a shared folder)."""
    with atomic_output(final_path) as (handle, temp):
        handle.write(data)
        os.chmod(temp, private_mode(final_path.parent) if mode is None else mode)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def scratch_folder(near: Path, name: str = ".scratch") -> Iterator[Path]:
    """A private folder on the same disk as `near` when it is writable (big files
    should not land on a small /tmp), else in the system's temp folder."""
    try:
        folder = tempfile.mkdtemp(prefix=f"{name}{TEMP_MARKER}{temp_owner_tag()}-", dir=near)
    except OSError:
        folder = tempfile.mkdtemp(prefix="stash-backup-scratch-")
    try:
        take_parent_owner(Path(folder))  # a killed run's leftover must be removable by Stash's user
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def temp_owner_tag() -> str:
    """`<pid>.<machine>`: enough for a later run to ask whether the maker still lives."""
    return f"{os.getpid()}.{machine_id()}"


def is_abandoned(entry: Path, now: float) -> bool:
    """A temp file or folder no live run owns: its maker, on this machine, is gone;
    or nobody has touched it for longer than any run takes. A verify or dry run
    works in scratch folders without the archive's lock: theirs must survive."""
    owner = temp_owner(entry.name)
    if owner and dead_here(owner[1], owner[0]):
        return True
    return now - _last_touched(entry) > RUN_LIMIT_SECONDS


def _last_touched(entry: Path) -> float:
    """The newest mtime of the entry and, for a folder, of what is directly in it."""
    times = [entry.lstat().st_mtime]
    if entry.is_dir() and not entry.is_symlink():
        times += [child.lstat().st_mtime for child in entry.iterdir()]
    return max(times)


RUNNING_PID_FILE = "stash.pid"  # in a temp folder: the process working there (a drill's scratch Stash)


def _runs_a_process(folder: Path) -> bool:
    """Whether a temp folder names, in its pid file, a process that still lives (or
    may: the system cannot say). Such a folder is left alone, even by a run whose
    lock keeps out every maker: the restore drill's Stash outlives a killed drill
    where the kernel does not end it, and only the next drill can tell it is ours."""
    try:
        pid = int((folder / RUNNING_PID_FILE).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return False
    return pid > 0 and alive(pid) is not False


def remove_stale_temps(folder: Path, prefix: str = "", lock_excludes_makers: bool = False) -> list[Path]:
    """Remove our temp files and folders (those whose name starts with `prefix`) that
    killed runs left behind, and only those: see is_abandoned. A caller whose lock
    keeps out every run that could make such temps (stash-restore's run lock on its
    database folder) knows them all abandoned. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        if TEMP_MARKER not in entry.name or not entry.name.startswith(prefix):
            continue
        with contextlib.suppress(OSError):
            if lock_excludes_makers or is_abandoned(entry, now):
                if entry.is_dir() and not entry.is_symlink():
                    if _runs_a_process(entry):
                        continue
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed
