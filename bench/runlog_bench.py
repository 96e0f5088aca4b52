"""What logging costs a training step: each sink of the run log (metrics.jsonl, TensorBoard, wandb offline) opened,
given the records of a run one at a time, and closed; the same records for each, the sinks alternating."""

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


def sink_costs(make, records: list[dict], pause: float) -> tuple[float, list[float]]:
    """(seconds to open and close, microseconds of each write) of the sink that make() returns, the records written
    `pause` seconds apart: a training step's time, in which the writer threads of TensorBoard and wandb drain their
    queues (a step's work releases the GIL, as sleep does)."""
    t0 = time.perf_counter()
    sink = make()
    opened = time.perf_counter() - t0
    writes = []
    for record in records:
        t1 = time.perf_counter()
        sink.write(record)
        writes.append((time.perf_counter() - t1) * 1e6)
        time.sleep(pause)
    t2 = time.perf_counter()
    sink.close()
    return opened + time.perf_counter() - t2, writes


def bench_runlog(quick: bool) -> list[dict]:
    from gptkit.training.runlog import METRICS_FILE, MetricsFile, TensorBoardSink, WandbSink

    records = fake_records(300 if quick else 2000)
    repeats, pause = (1, 0.002) if quick else (3, 0.002)
    folder = Path(tempfile.mkdtemp(prefix="gptkit-bench-"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    settings = {"model": "micro", "lr": 6e-4, "steps": len(records)}
    sinks = {
        "metrics.jsonl": lambda: MetricsFile(folder / METRICS_FILE, append=False),
        "TensorBoard": lambda: TensorBoardSink(folder, settings, start_step=0),
        "wandb (offline)": lambda: WandbSink("gptkit-bench", folder, settings, resumed=False),
    }
    try:
        # the sinks alternate, repeat by repeat, so that machine noise hits them alike
        runs = {name: [] for name in sinks}
        for _ in range(repeats):
            for name, make in sinks.items():
                runs[name].append(sink_costs(make, records, pause))
        rows = []
        for name, costs in runs.items():
            writes = sorted(w for _, run_writes in costs for w in run_writes)
            rows.append(
                {
                    "sink": name,
                    "records": len(records),
                    "pause_s": pause,
                    "open_close_s": summary([opened for opened, _ in costs])["median"],
                    "median": writes[len(writes) // 2],
                    "p99": writes[int(len(writes) * 0.99)],
                    "mean": sum(writes) / len(writes),
                }
            )
        return rows
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    for row in bench_runlog(quick="--quick" in sys.argv):
        print(
            f"{row['sink']}: a write takes {row['median']:.1f} us median, {row['mean']:.1f} mean, {row['p99']:.1f} "
            f"99th percentile; open + close {row['open_close_s']:.2f} s ({row['records']} records, "
            f"{row['pause_s'] * 1e3:.0f} ms apart)"
        )
