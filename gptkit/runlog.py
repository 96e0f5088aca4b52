"""Where a training run's per-step records go. The loop makes one record a step (step, loss, lr, grad_norm,
tokens_seen, tokens_per_s, step_time_s, and val_loss when it evaluated) and hands it to a RunLog, which passes it to
every sink: the progress display and metrics.jsonl. A sink is opened when made, written once a step, closed once."""

import json
from pathlib import Path


class ProgressDisplay:
    """A live rich bar on a terminal; otherwise one plain line every log_every steps (and at evaluations)."""

    def __init__(self, console, total: int, start: int):
        self.console = console
        self.total = total
        self.live = console.is_terminal
        self.log_every = max(1, total // 20)
        self.smoothed = None
        self.val = None
        self.bar = None
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, stats="")
            self.bar.start()

    def write(self, record: dict):
        step, loss, lr, tokens_per_s = record["step"], record["loss"], record["lr"], record["tokens_per_s"]
        val_loss = record.get("val_loss")
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        self.val = val_loss if val_loss is not None else self.val
        val = f"  val {self.val:.4f}" if self.val is not None else ""
        stats = f"loss {self.smoothed:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s{val}"
        if self.live:
            self.bar.update(self.task, completed=step, stats=stats)
        elif step % self.log_every == 0 or step == self.total or val_loss is not None:
            now_val = f" val {val_loss:.4f}" if val_loss is not None else ""
            self.console.print(
                f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {tokens_per_s:,.0f} tok/s{now_val}",
                highlight=False,
            )

    def close(self):
        if self.bar is not None:
            self.bar.stop()


class MetricsFile:
    """metrics.jsonl: one JSON line a step, flushed as written. Created at the first record, so a run that fails
    before its first step leaves no file; a resumed run appends."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        self.mode = "a" if append else "w"
        self.file = None

    def write(self, record: dict):
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, self.mode)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


class RunLog:
    """One record a step, written to every sink; closes them all however the run ends."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def write(self, record: dict):
        for sink in self.sinks:
            sink.write(record)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for sink in self.sinks:
            sink.close()
