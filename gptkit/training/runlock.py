"""One process at a time in a run folder. `gptkit train` holds an exclusive lock on the folder's `.lock` file from
before it writes anything until it ends; `gptkit eval` takes the same lock to append to evals.jsonl. The lock is the
operating system's (flock on POSIX, msvcrt.locking on Windows), so it goes away with its process however that ends:
a crash or kill -9 never leaves a stale lock. The holder writes its pid and command into the file, for the message of
a process it turns away, and removes the file when it lets go. Needs no torch."""

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import GptkitError

LOCK_FILE = ".lock"
EVALS_LOCK_FILE = ".evals.lock"  # eval's appends to a run folder's evals.jsonl, beside a training run holding LOCK_FILE

# What to tell a command turned away from a folder in use, and how long it waits first. A run folder is held by a
# training run until it ends (train waits RUN_LOCK_WAIT_S for a process letting go); evals.jsonl by an eval appending
# to it or a run clearing it (--overwrite), for milliseconds; a download's folder by another download or a run, for
# as long as they last.
RUN_FOLDER_IN_USE = "wait for that run to end (or stop it), or pick another --out"
RUN_LOCK_WAIT_S = 0.5
EVAL_FOLDER_IN_USE = "wait for it to end, or evaluate a copy of the checkpoint"
EVAL_LOCK_WAIT_S = 0.5
DOWNLOAD_FOLDER_IN_USE = "wait for it to end, or download into another --out"

if os.name == "nt":
    import msvcrt

    LOCKED_BYTE = 1 << 20  # Windows locks bar reading the locked bytes: lock one past the pid and command

    def try_lock(fd: int) -> bool:
        os.lseek(fd, LOCKED_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError:  # EACCES: another process holds it
            return False
        return True

    def unlock(fd: int):
        os.lseek(fd, LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it
            return False
        return True

    def unlock(fd: int):
        fcntl.flock(fd, fcntl.LOCK_UN)


def holder(path: Path) -> str:
    """Who holds the lock at path, as its file says: 'process PID (COMMAND)'."""
    try:
        pid, _, command = path.read_text().strip().partition(" ")
    except OSError:
        pid = ""
    return f"process {pid} ({command})" if pid.isdigit() else "another process"


def is_same_file(fd: int, path: Path) -> bool:
    """Whether path still names the file open as fd (its holder removes it on letting go)."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def acquire(path: Path, command: str, hint: str, wait_s: float) -> int | None:
    """An open descriptor of path holding its lock (None where the filesystem has no locks). Another holder still
    there after wait_s seconds: a GptkitError naming it, with hint (what to do)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except FileNotFoundError:  # the folder was removed by a process that made it and is letting go
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            locked = try_lock(fd)
        except OSError as e:  # e.g. ENOSYS, ENOLCK: a network filesystem mounted without locks
            os.close(fd)
            print(
                f"warning: cannot lock {path} ({e.strerror or e}): going on without; make sure no other gptkit "
                f"process uses {path.parent}",
                file=sys.stderr,
            )
            return None
        if locked and is_same_file(fd, path):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {command}\n".encode())
            return fd
        if locked:  # locked a file its holder had just removed: try the one at path now
            unlock(fd)
        os.close(fd)
        if not locked and time.monotonic() >= deadline:
            raise GptkitError(f"{path.parent} is in use by {holder(path)}: {hint}")
        if not locked:
            time.sleep(0.05)


def release(fd: int, path: Path):
    if os.name == "nt":  # an open file cannot be removed on Windows: let go, then remove it unless reopened
        unlock(fd)
        os.close(fd)
        try:
            path.unlink()
        except OSError:
            pass
        return
    try:
        if is_same_file(fd, path):
            path.unlink(missing_ok=True)  # while still locked, so that no one locks the file being removed
    finally:
        os.close(fd)  # lets go of the lock


def check_not_held(folder: Path, hint: str, wait_s: float = 0.0):
    """The refusal folder_lock(folder, ..., hint, wait_s) would give, checked without making anything or keeping the
    lock: for a command to fail fast, before its slow start, when another process holds the folder."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except OSError:  # no lock file, so no holder (or one this process cannot open: folder_lock will say)
        return
    deadline = time.monotonic() + wait_s
    try:
        while not try_lock(fd):
            if time.monotonic() >= deadline:
                raise GptkitError(f"{path.parent} is in use by {holder(path)}: {hint}")
            time.sleep(0.05)
        unlock(fd)
    except OSError:  # a filesystem without locks: folder_lock will warn
        pass
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder: Path, command: str, hint: str, wait_s: float = 0.0, lock_file: str = LOCK_FILE):
    """Hold folder's lock (making the folder if missing) through the block, as command (e.g. 'gptkit train').
    Another process holding it for longer than wait_s: GptkitError '<folder> is in use by process PID (COMMAND):
    <hint>'; a folder that cannot be written (read-only, not a folder): GptkitError too. Folders made here that the
    block leaves empty are removed again."""
    folder = Path(folder)
    made = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        made.append(parent)
    path, fd = folder / lock_file, None
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = acquire(path, command, hint, wait_s)
        except OSError as e:
            raise GptkitError(f"cannot write to {folder}: {e.strerror or e}") from None
        yield
    finally:
        if fd is not None:
            release(fd, path)
        for empty in made:
            try:
                empty.rmdir()
            except OSError:  # not empty: the run wrote something
                break
