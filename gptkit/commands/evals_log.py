"""A checkpoint folder's evals.jsonl: every `gptkit eval` result, a line each, appended under its lock."""

import json
import os
import sys
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.training.runlock import EVAL_FOLDER_IN_USE, EVAL_LOCK_WAIT_S, EVALS_LOCK_FILE, folder_lock
from gptkit.training.runlog import EVALS_FILE


def append_record(folder: Path, record: dict):
    """Add one line to the checkpoint folder's evals.jsonl, under the lock of that file (runlock.EVALS_LOCK_FILE,
    which other evals and a run's --overwrite take; a training run holds the folder's own lock, and goes on), on a
    line of its own even after a line that a crash cut short; a read-only folder only earns a warning."""
    path = folder / EVALS_FILE
    lock = folder_lock(folder, "gptkit eval", EVAL_FOLDER_IN_USE, EVAL_LOCK_WAIT_S, EVALS_LOCK_FILE)
    try:
        with lock, open(path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # the last line was cut short by a crash: start a new one
                    f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode())
    except OSError as e:
        print(f"warning: could not append the results to {path}: {e.strerror or e}", file=sys.stderr)
    except GptkitError as e:
        print(f"warning: could not append the results to {path}: {e}", file=sys.stderr)
