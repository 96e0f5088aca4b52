"""`gptkit inspect`: what is in a checkpoint, read from the safetensors header and the JSON files (no torch); for a
training run's folder also its loss curve, from metrics.jsonl."""

import json
import re
import sys
from collections import Counter
from pathlib import Path

from gptkit.checkpoint.folder import read_metadata
from gptkit.checkpoint.huggingface import IGNORED_SUFFIXES, SCALES_SUFFIX, strip_prefix
from gptkit.checkpoint.locate import checkpoint_files, is_int8, resolve
from gptkit.checkpoint.tensors import FLOAT_DTYPES, read_safetensors_header
from gptkit.files import read_json
from gptkit.options import InspectOptions
from gptkit.training.runlog import METRICS_FILE, read_metrics
from gptkit.units import human_bytes, human_count

LAYER = re.compile(r"(^|\.)h\.(\d+)\.")
# The order of a GPT-2's modules, so the tensor table reads top to bottom like the model.
PART_RANK = {
    **{"wte": 0, "wpe": 1, "h": 2, "ln_f": 3, "lm_head": 4},
    **{"ln_1": 0, "attn": 1, "ln_2": 2, "mlp": 3, "c_attn": 0, "c_fc": 0, "c_proj": 1, "weight": 0, "bias": 1},
}
SPARK_LEVELS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40
CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "activation_function", "dtype")


def numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model_order(name: str) -> list:
    return [int(part) if part.isdigit() else PART_RANK.get(part, 9) for part in strip_prefix(name).split(".")]


def group_tensors(tensors: list[dict]) -> list[dict]:
    """Collapse the per-layer tensors h.0.x ... h.47.x into one row h.[0-47].x each."""
    rows, by_pattern = [], {}
    for t in tensors:
        m = LAYER.search(t["name"])
        if not m:
            rows.append({**t, "count": 1})
            continue
        pattern = LAYER.sub(r"\1h.*.", t["name"], count=1)
        key = (pattern, tuple(t["shape"]), t["dtype"])
        if key not in by_pattern:
            by_pattern[key] = {"name": pattern, "shape": t["shape"], "dtype": t["dtype"], "layers": []}
            rows.append(by_pattern[key])
        by_pattern[key]["layers"].append(int(m.group(2)))
    for row in rows:
        if "layers" in row:
            layers = row.pop("layers")
            row["count"] = len(layers)
            span = f"{min(layers)}-{max(layers)}" if len(layers) > 1 else str(layers[0])
            row["name"] = row["name"].replace("h.*.", f"h.[{span}].", 1)
    return rows


def inspect_checkpoint(path: str | Path) -> dict:
    """Everything `gptkit inspect` shows, as a JSON-ready dict."""
    path = Path(path)
    weights, config_file = resolve(path)
    header = read_safetensors_header(weights)
    file_metadata = header.pop("__metadata__", {}) or {}
    tensors = [
        {"name": name, "shape": info["shape"], "dtype": info["dtype"]}
        for name, info in sorted(header.items(), key=lambda kv: model_order(kv[0]))
    ]
    config = read_json(config_file) if config_file else json.loads(file_metadata.get("gptkit_config", "{}"))

    # The scales of int8 weights are not parameters (the float model has none), nor is the output head, tied to wte
    # (an int8 checkpoint stores it apart, quantized, but it is the same parameters)
    not_parameters = IGNORED_SUFFIXES + (SCALES_SUFFIX,)
    params = {strip_prefix(t["name"]): numel(t["shape"]) for t in tensors if not t["name"].endswith(not_parameters)}
    if config.get("tie_word_embeddings", True):
        params.pop("lm_head.weight", None)  # the same numbers as wte.weight
    total = sum(params.values())
    folder = path if path.is_dir() else None
    return {
        "path": str(path),
        "config": {k: config[k] for k in CONFIG_KEYS if k in config},
        "parameters": {
            "total": total,
            "non_embedding": total - params.get("wte.weight", 0) - params.get("wpe.weight", 0),
        },
        "size_on_disk": sum(p.stat().st_size for p in checkpoint_files(path)),
        "quantization": quantization(header, tensors),
        "dtypes": dict(Counter(t["dtype"] for t in tensors)),
        "tensor_count": len(tensors),
        "tensors": tensors,
        "metadata": read_metadata(path) if folder else {},
        "metrics": metrics_summary(folder / METRICS_FILE) if folder else None,
    }


def quantization(header: dict, tensors: list[dict]) -> dict | None:
    """How an int8 checkpoint's weights are stored (None for float weights)."""
    if not is_int8(header):
        return None
    scales = [t for t in tensors if t["name"].endswith(SCALES_SUFFIX)]
    return {
        "method": "int8",
        "granularity": "per output channel",
        "int8_tensors": sum(t["dtype"] == "I8" for t in tensors),
        "int8_parameters": sum(numel(t["shape"]) for t in tensors if t["dtype"] == "I8"),
        "scales_dtype": scales[0]["dtype"] if scales else None,
    }


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """values in at most `width` characters, each the mean of its share of the values, from ▁ (least) to █."""
    n = len(values)
    width = min(width, n)
    bins = [values[i * n // width : (i + 1) * n // width] for i in range(width)]
    means = [sum(b) / len(b) for b in bins]
    low, span = min(means), (max(means) - min(means)) or 1.0
    return "".join(SPARK_LEVELS[round((m - low) / span * (len(SPARK_LEVELS) - 1))] for m in means)


def metrics_summary(path: Path) -> dict | None:
    """The loss curve of a run folder's metrics.jsonl in a few numbers and a sparkline; None without one."""
    if not path.is_file():
        return None
    records, unreadable = read_metrics(path)
    if not records:
        return {"records": 0, "skipped_lines": unreadable}
    losses = [r["loss"] for r in records]
    val = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    return {
        "records": len(records),
        "skipped_lines": unreadable,
        "first_step": records[0]["step"],
        "last_step": records[-1]["step"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "min_loss": min(losses),
        "last_val_loss": val[-1] if val else None,
        "loss_sparkline": sparkline(losses),
    }


def metadata_rows(metadata: dict, indent: str = ""):
    """(key, value) rows of nested metadata: a nested dict as a heading row and its keys indented under it."""
    for key, value in metadata.items():
        if isinstance(value, dict):
            yield indent + key, ""
            yield from metadata_rows(value, indent + "  ")
        else:
            yield indent + key, readable(value)


def readable(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return "none" if value is None else json.dumps(value)


def render(info: dict, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{info['path']}[/bold]")
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="dim")
    summary.add_column()
    for key, value in info["config"].items():
        summary.add_row(key, str(value))
    p = info["parameters"]
    summary.add_row("parameters", f"{human_count(p['total'])} ({p['total']:,})")
    summary.add_row("without embeddings", f"{human_count(p['non_embedding'])} ({p['non_embedding']:,})")
    summary.add_row("size on disk", human_bytes(info["size_on_disk"]))
    q = info["quantization"]
    if q:
        summary.add_row(
            "quantization",
            f"int8 weights, one {FLOAT_DTYPES.get(q['scales_dtype'], q['scales_dtype'])} scale per output channel: "
            f"{q['int8_tensors']} Linear layers (the output head included), {human_count(q['int8_parameters'])} "
            "int8 weights; embeddings, layer norms and biases float",
        )
    summary.add_row("dtypes", ", ".join(f"{d} ({n} tensors)" for d, n in info["dtypes"].items()))
    console.print(summary)

    table = Table(title=f"{info['tensor_count']} tensors", title_justify="left")
    table.add_column("name")
    table.add_column("shape")
    table.add_column("dtype")
    table.add_column("count", justify="right")
    for row in group_tensors(info["tensors"]):
        table.add_row(row["name"], "x".join(map(str, row["shape"])) or "scalar", row["dtype"], str(row["count"]))
    console.print(table)

    if info["metadata"]:
        meta = Table.grid(padding=(0, 2))
        meta.add_column(style="dim", no_wrap=True)
        meta.add_column(overflow="fold")
        for key, value in metadata_rows(info["metadata"]):
            meta.add_row(key, value)
        console.print("[bold]gptkit metadata[/bold]")
        console.print(meta)

    m = info.get("metrics")
    if m:
        console.print(f"[bold]training curve[/bold] ({METRICS_FILE})")
        if m["records"]:
            val = f", val {m['last_val_loss']:.4f}" if m["last_val_loss"] is not None else ""
            console.print(
                f"loss {m['loss_sparkline']} {m['first_loss']:.4f} -> {m['last_loss']:.4f} "
                f"(min {m['min_loss']:.4f}), steps {m['first_step']}-{m['last_step']}{val}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            console.print("no training steps recorded yet")
        if m["skipped_lines"]:
            console.print(
                f"[yellow]{m['skipped_lines']} unreadable line(s) of {METRICS_FILE} skipped "
                "(cut short by a crash mid-write?)[/yellow]"
            )


def inspect(options: InspectOptions):
    """`gptkit inspect`: the summary as a table, or as JSON with --json."""
    from rich.console import Console

    info = inspect_checkpoint(options.ckpt)
    if options.json_output:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        render(info, Console())
