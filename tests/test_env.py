"""`gptkit env`, and the machine rules it reports (what --dtype auto picks on the CPU), at every CPU level this host
runs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gptkit.machine.cpu import cpu_level, lower_cpu_levels

LEVELS = [None, *lower_cpu_levels()]  # None: the host's own level


def gptkit_env(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    return subprocess.run(
        [sys.executable, "-m", "gptkit", "env", *args], capture_output=True, text=True, env=env | env_vars
    )


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level or "native")
def test_env_json_reports_the_level_torch_runs_and_what_auto_picks_there(level):
    result = gptkit_env("--json", **({"ATEN_CPU_CAPABILITY": level} if level else {}))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    cpu = info["cpu"]
    assert cpu["level"] == (level.upper() if level else cpu_level())
    assert info["packages"]["torch"] == torch.__version__.split("+")[0]
    assert cpu["cores"] == os.cpu_count() and cpu["torch_threads"] >= 1
    assert info["auto_device"] == ("cuda" if torch.cuda.is_available() else "mps" if info["mps"] else "cpu")
    # bf16 where the CPU multiplies it natively, whatever level torch's own kernels run at
    assert cpu["auto_dtype"] == ("bfloat16" if cpu["native_bf16"] else "float32")
    if cpu["level"] == "DEFAULT":
        assert cpu["lower_levels"] == [] and cpu["int8_kernel_activations"] in (None, "float32")


def test_auto_is_float32_where_onednn_does_not_multiply_bf16():
    """ONEDNN_MAX_CPU_ISA caps the instructions oneDNN uses: below AVX-512 it has no bf16 path, on any CPU."""
    result = gptkit_env("--json", ONEDNN_MAX_CPU_ISA="AVX2")
    assert result.returncode == 0, result.stderr
    cpu = json.loads(result.stdout)["cpu"]
    assert not cpu["native_bf16"] and cpu["auto_dtype"] == "float32"


def test_auto_is_float32_on_a_cpu_without_bf16_instructions(monkeypatch):
    from gptkit.machine import cpu
    from gptkit.machine import runtime

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512bw"}))
    assert runtime.pick_dtype("auto", torch.device("cpu")) == torch.float32


def test_env_text_fits_one_screen_and_names_the_level():
    result = gptkit_env()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 40
    level_line = next(line for line in lines if line.startswith("CPU level"))
    assert cpu_level() in level_line
    assert any(line.startswith("--dtype auto on cpu") for line in lines)
