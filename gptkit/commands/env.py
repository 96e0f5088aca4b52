"""`gptkit env`: the facts about this machine and its software that a bug report needs, and the choices gptkit makes
from them (the device and dtype that --device/--dtype auto pick, the int8 kernel)."""

import json
import os
import platform
import sys
from importlib import metadata

from gptkit import __version__
from gptkit.options import EnvOptions

# The packages whose versions matter to a report: the dependencies, then the optional extras.
PACKAGES = ("torch", "transformers", "safetensors", "tiktoken", "numpy", "typer", "rich", "huggingface_hub")
EXTRAS = {
    "parquet": "pyarrow",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "plot": "matplotlib",
    "gguf": "gguf",
    "serve": "fastapi",
}


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def environment() -> dict:
    """Everything `gptkit env` shows, as plain data."""
    import torch

    from gptkit.machine.cpu import cpu_level, cpu_prefers_bf16, lower_cpu_levels
    from gptkit.model.int8 import has_int8_kernel, kernel_dtype_for_level
    from gptkit.machine.runtime import pick_device, pick_dtype

    cpu = torch.device("cpu")
    info = {
        "gptkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: version_of(name) for name in PACKAGES},
        "extras": {extra: version_of(package) for extra, package in EXTRAS.items()},
        "cuda_build": torch.version.cuda,
        "cpu": {
            "model": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "level": cpu_level(),
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
            "lower_levels": lower_cpu_levels(),
            "native_bf16": cpu_prefers_bf16(),
            "auto_dtype": dtype_name(pick_dtype("auto", cpu)),
            "int8_kernel": has_int8_kernel(cpu),
            "int8_kernel_activations": dtype_name(kernel_dtype_for_level(cpu_level())) if has_int8_kernel(cpu) else None,
        },
        "cuda": [],
        "mps": torch.backends.mps.is_available(),
        "auto_device": str(pick_device("auto")),
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            device = torch.device("cuda", index)
            props = torch.cuda.get_device_properties(index)
            info["cuda"].append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                    "auto_dtype": dtype_name(pick_dtype("auto", device)),
                }
            )
    if info["mps"]:
        info["mps_auto_dtype"] = dtype_name(pick_dtype("auto", torch.device("mps")))
    return info


def render(info: dict, console):
    """The one-screen text form of environment()."""
    cpu = info["cpu"]
    level = cpu["level"] + (f" (ATEN_CPU_CAPABILITY={cpu['aten_cpu_capability']})" if cpu["aten_cpu_capability"] else "")
    lower = f"; also runs {', '.join(cpu['lower_levels'])}" if cpu["lower_levels"] else ""
    int8 = f"torch's kernel, {cpu['int8_kernel_activations']} activations" if cpu["int8_kernel"] else "dequantized"
    rows = [
        ("gptkit", info["gptkit"]),
        ("python", f"{info['python']} ({info['platform']})"),
        *((name, version or "not installed") for name, version in info["packages"].items()),
        ("extras", ", ".join(f"{e} {v}" if v else f"{e} -" for e, v in info["extras"].items())),
        ("torch CUDA build", info["cuda_build"] or "none (CPU build)"),
        ("CPU", f"{cpu['model']}, {cpu['cores']} cores, {cpu['torch_threads']} torch threads"),
        ("CPU level", level + lower),
        ("native bf16", "yes" if cpu["native_bf16"] else "no"),
        ("--dtype auto on cpu", cpu["auto_dtype"]),
        ("int8 on cpu", int8),
    ]
    for index, gpu in enumerate(info["cuda"]):
        rows.append((f"cuda:{index}", f"{gpu['name']}, {gpu['memory_gib']} GiB, sm {gpu['capability']}, "
                     f"--dtype auto {gpu['auto_dtype']}"))  # fmt: skip
    if not info["cuda"]:
        rows.append(("CUDA", "no GPU visible"))
    rows.append(("MPS", f"yes, --dtype auto {info['mps_auto_dtype']}" if info["mps"] else "no"))
    rows.append(("--device auto", info["auto_device"]))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        console.print(f"{key:<{width}}  {value}", highlight=False, soft_wrap=True)



def env(options: EnvOptions):
    """`gptkit env`: the facts as a table, or as JSON with --json."""
    from rich.console import Console

    info = environment()
    if options.json_output:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        render(info, Console())
