"""Fault injection for the nothing-lost tests: count the calls that change files under a folder, and at a chosen one
kill the process (SIGKILL) or make the call fail with an OSError, as a full disk or a failing one would.

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
