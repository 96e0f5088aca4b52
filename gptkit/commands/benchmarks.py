"""`gptkit eval --tasks / --core`: lm-evaluation-harness tasks (evaluation.harness) or the CORE score
(evaluation.core) of a checkpoint, printed as a table (or JSON) and appended to its evals.jsonl as eval's other
results are."""

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from gptkit import __version__


def run_benchmarks(opts) -> dict:
    """Run opts.tasks and / or the CORE bundle opts.core on opts.ckpt (opts: an EvalOptions, checked)."""
    from gptkit.commands.evals_log import append_record
    from gptkit.checkpoint.folder import read_metadata

    ckpt = Path(opts.ckpt)
    settings = {"batch_size": opts.batch_size, "device": opts.device, "dtype": opts.dtype, "quantize": opts.quantize}
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gptkit_version": __version__,
        "checkpoint": str(ckpt.resolve()),
        "step": read_metadata(ckpt).get("step"),
    }
    if opts.tasks is not None:
        from gptkit.evaluation.harness import run_tasks

        tasks = [task.strip() for task in opts.tasks.split(",") if task.strip()]
        record["tasks"] = run_tasks(
            ckpt, tasks, opts.num_fewshot, opts.limit, opts.include_path, progress=not opts.json_output, **settings
        )
    if opts.core is not None:
        from gptkit.evaluation.core import core_score

        record["core"] = core_score(ckpt, opts.core, opts.limit, progress=not opts.json_output, **settings)
    if opts.json_output:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    else:
        print_benchmarks(record)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    common = {key: record[key] for key in ("date", "gptkit_version", "checkpoint", "step")}
    for name, task in record.get("tasks", {}).get("tasks", {}).items():  # a line a task, as eval's other results
        append_record(folder, common | {"task": name, **task, "settings": record["tasks"]["settings"]})
    if "core" in record:
        append_record(folder, common | {"core": record["core"]})
    return record


def print_benchmarks(record: dict):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"benchmarks of {record['checkpoint']}", title_justify="left")
    for column in ("task", "metric", "value", "shots", "examples"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, task in record.get("tasks", {}).get("tasks", {}).items():
        for metric, value in task["metrics"].items():
            if not metric.endswith("_stderr") and isinstance(value, (int, float)):
                stderr = task["metrics"].get(f"{metric}_stderr")
                shown = f"{value:.4f}" + (f" ± {stderr:.4f}" if isinstance(stderr, float) else "")
                table.add_row(name, metric, shown, str(task["num_fewshot"]), str(task["examples"]))
    if "core" in record:
        core = record["core"]
        for label, task in core["tasks"].items():
            row = f"{task['accuracy']:.4f} (centred {task['centered']:.4f})"
            table.add_row(f"CORE: {label}", "accuracy", row, str(task["num_fewshot"]), str(task["examples"]))
        table.add_row("CORE", "mean centred accuracy", f"{core['core']:.4f}", "", "")
    Console().print(table)
