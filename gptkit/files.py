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
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; once the block succeeds, rename it over `path` (else delete it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is owner-only (and writers may replace it)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path, first: str | None = None):
    """Yield a temporary folder beside `path` to write files into; once the block succeeds, it becomes `path` (one
    rename), or, where `path` exists, its files replace those of `path` one by one (the file named `first` before the
    others); else it is deleted. So an interrupted write leaves nothing half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's folder is owner-only
        if not path.exists():
            os.rename(tmp, path)
            return
        for file in sorted(tmp.iterdir(), key=lambda f: f.name != first):
            os.replace(file, path / file.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
