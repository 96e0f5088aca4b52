import os

import pytest

from gptkit.errors import GptkitError
from gptkit.runlock import check_not_held, folder_lock


def test_a_held_folder_is_refused_naming_its_holder(tmp_path):
    folder = tmp_path / "new" / "run"
    refusal = rf"{folder} is in use by process {os.getpid()} \(gptkit train\): do this"
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
