"""Fault injection for the nothing-lost tests: count the calls that change files under a folder, and at a chosen one
kill the process (SIGKILL) or make the call fail with an OSError, as a full disk or a failing one would. WriteOrder
records the fsyncs and renames of writes, for the durability tests.

Run as a program, it is `gptkit` with a fault plan from the environment: FAULT_ROOT (the folder whose files count),
FAULT_AT (kill the process at that call: a number, or NAME:K; 0: never), FAULT_LOG (a file it appends to: the JSON
list of the (name, path) of the calls it counted, as it ends or before it kills, then "killed at NAME PATH")."""

import json
import os
import pathlib
import signal
import sys

# The calls that change files, and where in their arguments each names its path. A fault at one that writes a file
# (WRITES) comes after half of the file is written, as a kill or a full disk in the middle of the write would.
CALLS = {
    ("gptkit.files", "fsync"): 0,
    ("os", "replace"): 0,
    ("os", "rename"): 0,
    ("os", "link"): 1,
    ("os", "unlink"): 0,
    ("os", "rmdir"): 0,
    ("os", "mkdir"): 0,
    ("shutil", "rmtree"): 0,
    ("shutil", "copyfile"): 1,
    ("safetensors.torch", "save_file"): 1,
    ("pathlib.Path", "write_text"): 0,
}
WRITES = {"save_file", "write_text", "copyfile"}


def owner(dotted: str):
    if dotted == "pathlib.Path":
        return pathlib.Path
    __import__(dotted)
    return sys.modules[dotted]


class Faults:
    """Counts the calls of CALLS on paths under root; the call numbered `at` (from 1; or, where at is "NAME:K", the
    K-th call of NAME) runs fault(name, path) instead of returning."""

    def __init__(self, root: pathlib.Path, at: int | str = 0, fault=None):
        self.root, self.at, self.fault = str(pathlib.Path(root).resolve()), at, fault
        self.calls: list[tuple[str, str]] = []  # (name, path) of each call counted

    def install(self, setattr_=setattr):
        for (where, name), arg in CALLS.items():
            module = owner(where)
            setattr_(module, name, self.wrap(name, arg, getattr(module, name)))

    def wrap(self, name, arg, real):
        def call(*args, **kwargs):
            path = args[arg] if len(args) > arg else None
            if path is None or not os.path.abspath(os.fspath(path)).startswith(self.root):
                return real(*args, **kwargs)
            self.calls.append((name, os.fspath(path)))
            if self.at not in (len(self.calls), f"{name}:{sum(called == name for called, _ in self.calls)}"):
                return real(*args, **kwargs)
            if name in WRITES:
                real(*args, **kwargs)
                os.truncate(path, os.path.getsize(path) // 2)
            self.fault(name, os.fspath(path))

        return call


class WriteOrder:
    """Records, in order, every fsync (of the file or folder as it is then: device, inode, size, mtime) and every
    rename that puts something under its own name in root (not into a temporary folder, not a removal's rename to a
    temporary name), with what the renamed file or folder then holds. problems() says where a write would not survive
    a power cut the moment it appears: for each such rename, the data of the file (or of every file in the folder,
    each folder after its files) fsynced as it is when renamed, and the folder it lands in fsynced after the rename."""

    def __init__(self, root: pathlib.Path):
        self.root = os.path.realpath(root)
        self.events: list[tuple] = []  # ("fsync", identity) or ("rename", dst, {relative path: (identity, is_dir)})

    def install(self, setattr_=setattr):
        real_fsync = os.fsync

        def fsync(fd):
            self.events.append(("fsync", identity(os.fstat(fd if isinstance(fd, int) else fd.fileno()))))
            return real_fsync(fd)

        setattr_(os, "fsync", fsync)
        for name in ("replace", "rename"):
            setattr_(os, name, self.wrap(getattr(os, name)))

    def wrap(self, real):
        def call(src, dst, *args, **kwargs):
            from gptkit.files import is_temporary

            dst_path = pathlib.Path(os.path.realpath(dst))
            under_root = [p for p in (dst_path, *dst_path.parents) if str(p).startswith(self.root)]
            if not under_root or any(is_temporary(p) for p in under_root):
                return real(src, dst, *args, **kwargs)
            moved = tree(os.fspath(src))
            result = real(src, dst, *args, **kwargs)
            self.events.append(("rename", str(dst_path), moved))
            return result

        return call

    def renames(self) -> list[str]:
        return [event[1] for event in self.events if event[0] == "rename"]

    def problems(self) -> list[str]:
        found = []
        for i, event in enumerate(self.events):
            if event[0] != "rename":
                continue
            _, dst, moved = event
            synced = {e[1]: k for k, e in enumerate(self.events[:i]) if e[0] == "fsync"}  # its last fsync, by identity
            for relative, (ident, is_dir) in moved.items():
                where = os.path.join(dst, relative) if relative else dst
                if ident not in synced:
                    found.append(f"{where} appeared before its data was fsynced")
                inside = [m for r, (m, _) in moved.items() if r and os.path.dirname(r) == relative]
                if is_dir and ident in synced and any(synced.get(m, -1) > synced[ident] for m in inside):
                    found.append(f"{where}: the folder was fsynced before its files")
            parent = identity(os.stat(os.path.dirname(dst)))[:2]
            if not any(e[0] == "fsync" and e[1][:2] == parent for e in self.events[i + 1 :]):
                found.append(f"{dst}: its folder was not fsynced after the rename")
        return found


def identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def tree(path: str) -> dict[str, tuple[tuple, bool]]:
    """(identity, whether a folder) of path ("") and, for a folder, of everything in it, by relative path."""
    found = {"": (identity(os.stat(path)), os.path.isdir(path))}
    for folder, folders, files in os.walk(path):
        for name in folders + files:
            full = os.path.join(folder, name)
            found[os.path.relpath(full, path)] = (identity(os.stat(full)), os.path.isdir(full))
    return found


def raise_oserror(code: int):
    def fault(name, path):
        raise OSError(code, os.strerror(code), path)

    return fault


def main():
    log = pathlib.Path(os.environ["FAULT_LOG"])

    def kill(name, path):
        with open(log, "a") as f:
            f.write(json.dumps(faults.calls) + "\n" + f"killed at {name} {path}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    at = os.environ["FAULT_AT"]
    faults = Faults(pathlib.Path(os.environ["FAULT_ROOT"]), int(at) if at.isdigit() else at, kill)
    faults.install()
    from gptkit.cli import app

    try:
        app(sys.argv[1:], prog_name="gptkit")
    finally:
        with open(log, "a") as f:
            f.write(json.dumps(faults.calls) + "\n")


if __name__ == "__main__":
    main()
