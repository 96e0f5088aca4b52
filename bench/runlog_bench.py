"""What logging a training step costs: each sink of the run log (metrics.jsonl, TensorBoard, wandb offline) opened,
written the records of a run, and closed, against the same records."""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import summary


def fake_records(steps: int, eval_every: int = 250) -> list[dict]:
    """Records shaped as train_loop's: a decaying loss and validation every eval_every steps."""
    records = []
    for step in range(1, steps + 1):
        loss = 3.0 + 8.0 / (1 + step / 100) + 0.1 * ((step * 7919) % 13 - 6) / 6
        record = {
            "step": step,
            "loss": loss,
            "lr": 6e-4,
            "grad_norm": 0.9,
            "tokens_seen": step * 1024,
            "tokens_per_s": 1500.0 + step % 50,
            "step_time_s": 0.68,
        }
        if step % eval_every == 0:
            record["val_loss"] = loss + 0.2
        records.append(record)
    return records


def sink_costs(make, records: list[dict]) -> tuple[float, float]:
    """(seconds to open and close, microseconds per written record) of the sink that make() returns."""
    t0 = time.perf_counter()
    sink = make()
    t1 = time.perf_counter()
    for record in records:
        sink.write(record)
    t2 = time.perf_counter()
    sink.close()
    return t1 - t0 + time.perf_counter() - t2, (t2 - t1) / len(records) * 1e6


def bench_runlog(quick: bool) -> list[dict]:
    from gptkit.runlog import MetricsFile, TensorBoardSink, WandbSink

    records = fake_records(500 if quick else 5000)
    repeats = 2 if quick else 3
    folder = Path(tempfile.mkdtemp(prefix="gptkit-bench-"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    settings = {"model": "micro", "lr": 6e-4, "steps": len(records)}
    sinks = {
        "metrics.jsonl": lambda: MetricsFile(folder / "metrics.jsonl", append=False),
        "TensorBoard": lambda: TensorBoardSink(folder, settings, start_step=0),
        "wandb (offline)": lambda: WandbSink("gptkit-bench", folder, settings, resumed=False),
    }
    try:
        # alternate the sinks, repeat by repeat, so that machine noise hits them alike
        runs = {name: [] for name in sinks}
        for _ in range(repeats):
            for name, make in sinks.items():
                runs[name].append(sink_costs(make, records))
        return [
            {
                "sink": name,
                "records": len(records),
                "open_close_s": summary([opened for opened, _ in costs])["median"],
                **summary([per_record for _, per_record in costs]),
            }
            for name, costs in runs.items()
        ]
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    for row in bench_runlog(quick="--quick" in sys.argv):
        print(
            f"{row['sink']}: {row['median']:.1f} us a step (min {row['min']:.1f}, max {row['max']:.1f}), "
            f"open + close {row['open_close_s']:.2f} s, {row['records']} records"
        )
