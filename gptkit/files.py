"""Writing files so that a crash never leaves one half-written, reading JSON files with a clear error, and the sha256
of files' content. Every file gptkit writes (checkpoints, token manifests, run state, plots) goes through here.
Needs no torch."""

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import GptkitError


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: Path, flush_folder: bool = True):
    """Yield a temporary path beside `path`; once the block succeeds, flush it to the disk and rename it over `path`,
    then flush the folder, which makes the rename durable (else delete it). flush_folder=False leaves that to a caller
    that flushes the folder once after several files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is owner-only (and writers may replace it)
        fsync(Path(tmp))
        os.replace(tmp, path)
        if flush_folder:
            fsync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path, first: str | None = None):
    """Yield a temporary folder beside `path` to write files into; once the block succeeds, it becomes `path` (one
    rename), or, where `path` exists, its files replace those of `path` one by one (the file named `first` before the
    others); else it is deleted. So an interrupted write leaves nothing half-written. Every file is flushed to the disk
    before it takes its name, and the folder after its files (and its own folder after the rename)."""
    path = Path(path)
    if is_temporary(path) and path.is_dir():  # a temporary folder already, made whole by an atomic_dir of its own
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's folder is owner-only
        if not path.exists():
            for file in tmp.iterdir():
                fsync(file)
            fsync(tmp)
            os.rename(tmp, path)
            fsync(path.parent)
            return
        for file in sorted(tmp.iterdir(), key=lambda f: f.name != first):
            fsync(file)
            os.replace(file, path / file.name)
        fsync(path)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync(path: Path):
    """Flush a file's content, or a folder's entries, to the disk: a rename that follows is then durable."""
    if path.is_dir() and os.name == "nt":  # Windows cannot open a folder to flush it
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """Whether path is a temporary file or folder of atomic_path or atomic_dir (left behind by a killed process)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove(path: Path):
    """Remove a file or a folder with all it holds, if it exists. A folder is first renamed to a temporary name, so
    that a crash halfway leaves a name that is_temporary, never a part of the folder under its own name."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        if not is_temporary(path):
            doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.replace(path, doomed)
            path = doomed
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def link_or_copy(source: Path, path: Path, flush_folder: bool = True):
    """Make path hold source's content in one step (atomic_path, flush_folder as its): a hard link where the
    filesystem has them, else a copy."""
    if path.exists() and os.path.samefile(source, path):  # a rename onto another link of the same file does nothing
        return
    with atomic_path(path, flush_folder) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def data_hash(files: list[Path]) -> str:
    """sha256 of the files' content: of one file, its own sha256; of several, of their names and contents in order."""
    h = hashlib.sha256()
    for f in files:
        if len(files) > 1:
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: dict):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: Path, remedy: str = "restore it from a good copy") -> dict:
    """A JSON object file; a damaged one is a GptkitError naming it, ending with remedy (what to do)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GptkitError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptkitError(f"{path} is damaged (not valid JSON: {e}): {remedy}") from None
    if not isinstance(data, dict):
        raise GptkitError(f"{path} is damaged (not a JSON object): {remedy}")
    return data
