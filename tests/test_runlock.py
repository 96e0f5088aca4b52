import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from gptkit.training import runlock
from gptkit.errors import GptkitError
from gptkit.training.runlock import check_not_held, folder_lock

# Holds a folder's lock as `gptkit train` does, until its stdin closes or it is killed.
HOLDER = """
import sys
from gptkit.training.runlock import folder_lock

with folder_lock(sys.argv[1], "gptkit train", "wait for it"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder():
    """holder(folder): another process holding folder's lock (its Popen, once it holds it); killed at the end."""
    started = []

    def start(folder):
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout.readline() == "held\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_held_folder_is_refused_naming_its_holder(tmp_path):
    folder = tmp_path / "new" / "run"
    refusal = rf"{folder} is in use by process {os.getpid()} \(gptkit train\): do this"
    check_not_held(folder, "do this")
    assert not (tmp_path / "new").exists()  # checking makes nothing
    with folder_lock(folder, "gptkit train", "do this"):
        assert (folder / ".lock").read_text() == f"{os.getpid()} gptkit train\n"
        with pytest.raises(GptkitError, match=refusal), folder_lock(folder, "gptkit eval", "do this", wait_s=0.1):
            pass
        with pytest.raises(GptkitError, match=refusal):
            check_not_held(folder, "do this", wait_s=0.1)
    assert not (tmp_path / "new").exists()  # the folders it made, left empty, are removed
    check_not_held(folder, "do this")
    with folder_lock(folder, "gptkit eval", "do this"):  # free again
        (folder / "kept").write_text("")
    assert os.listdir(folder) == ["kept"]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    folder = tmp_path / "run"
    process = holder(folder)
    refusal = rf"{folder} is in use by process {process.pid} \(gptkit train\): do this"
    with pytest.raises(GptkitError, match=refusal):
        check_not_held(folder, "do this")
    with pytest.raises(GptkitError, match=refusal), folder_lock(folder, "gptkit eval", "do this"):
        pass
    process.kill()  # SIGKILL: no chance to let go or to remove its file
    process.wait()
    assert (folder / ".lock").read_text() == f"{process.pid} gptkit train\n"  # its file stays, its lock does not
    check_not_held(folder, "do this")
    with folder_lock(folder, "gptkit eval", "do this"):
        assert (folder / ".lock").read_text() == f"{os.getpid()} gptkit eval\n"
    assert os.listdir(folder) == []


def test_a_waiting_process_gets_the_folder_once_its_holder_lets_go(tmp_path, holder, monkeypatch):
    folder = tmp_path / "run"
    process = holder(folder)
    pauses = []

    def holder_lets_go_during_the_first_pause(seconds):
        if not pauses:
            process.stdin.close()
            process.wait()
        pauses.append(seconds)

    monkeypatch.setattr(
        runlock, "time", SimpleNamespace(monotonic=time.monotonic, sleep=holder_lets_go_during_the_first_pause)
    )
    with folder_lock(folder, "gptkit eval", "do this", wait_s=60):
        assert len(pauses) == 1 and process.returncode == 0
        assert (folder / ".lock").read_text() == f"{os.getpid()} gptkit eval\n"
