"""Where a training run's per-step records go. The loop makes one record a step (step, loss, lr, grad_norm,
tokens_seen, tokens_per_s, step_time_s, and val_loss and hellaswag_acc_norm when it
evaluated) and hands it to a RunLog, which passes it to
every sink: the progress display, metrics.jsonl, and on request TensorBoard and Weights & Biases. A sink is opened
when made, written once a step, closed once. Also here: metrics.jsonl read back tolerantly (by plot, inspect and
resume). No torch import at module level: plot and inspect read metrics without it."""

import json
import shutil
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.files import write_json
from gptkit.progress import progress_bar

METRICS_FILE = "metrics.jsonl"  # in a run folder: one record a step (MetricsFile), read back by read_metrics
WANDB_RUN_FILE = "wandb.json"  # the wandb project and run id of a run folder, so that --resume continues that run
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # wandb's own files of a run folder's run (wandb.init(dir=RUN) makes it)
EVALS_FILE = "evals.jsonl"  # in a checkpoint folder: one record a `gptkit eval`


def read_records(path: Path) -> tuple[list[dict], int]:
    """(the JSON objects of a .jsonl file, one a line; how many lines were not one). A line that a crash cut short
    (or any damaged line) is skipped and counted, never an error: the caller decides what to say about it."""
    records, unreadable = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                unreadable += 1
    return records, unreadable


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(the step records of a metrics.jsonl, how many lines were not one: cut short by a crash mid-write)."""
    records, unreadable = read_records(path)
    steps = [r for r in records if isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float))]
    return steps, unreadable + len(records) - len(steps)


def scalars(record: dict) -> dict[str, float]:
    """Every numeric field of a record but the step: what TensorBoard and wandb plot against the step."""
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def settings_table(settings: dict) -> str:
    """The run's settings as a markdown table (TensorBoard's text tab renders it)."""
    rows = "".join(f"| {key} | {value} |\n" for key, value in settings.items())
    return "| setting | value |\n| --- | --- |\n" + rows


class ProgressDisplay:
    """A live rich bar on a terminal; otherwise one plain line every log_every steps (and at evaluations)."""

    def __init__(self, console, total: int, start: int):
        self.console = console
        self.total = total
        self.live = console.is_terminal
        self.log_every = max(1, total // 20)
        self.smoothed = None
        self.val = None
        self.hellaswag = None
        self.bar = None
        if self.live:
            from rich.progress import TimeElapsedColumn

            self.bar = progress_bar(
                "{task.fields[stats]}",
                TimeElapsedColumn(),
                "ETA",
                label="step {task.completed}/{task.total}",
                console=console,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, stats="")
            self.bar.start()

    def write(self, record: dict):
        step, loss, lr, tokens_per_s = record["step"], record["loss"], record["lr"], record["tokens_per_s"]
        val_loss, hellaswag = record.get("val_loss"), record.get("hellaswag_acc_norm")
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        self.val = val_loss if val_loss is not None else self.val
        self.hellaswag = hellaswag if hellaswag is not None else self.hellaswag
        val = f"  val {self.val:.4f}" if self.val is not None else ""
        val += f"  hellaswag {self.hellaswag:.3f}" if self.hellaswag is not None else ""
        stats = f"loss {self.smoothed:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s{val}"
        if self.live:
            self.bar.update(self.task, completed=step, stats=stats)
        elif step % self.log_every == 0 or step == self.total or val_loss is not None or hellaswag is not None:
            now_val = f" val {val_loss:.4f}" if val_loss is not None else ""
            now_val += f" hellaswag {hellaswag:.3f}" if hellaswag is not None else ""
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


class TensorBoardSink:
    """TensorBoard event files in RUN/tensorboard: every numeric field of each record against its step, and the
    run's settings as text. A resumed run first purges the events past the step it resumes from (written after the
    last save by a run that then stopped), so its curves go on without duplicated steps."""

    def __init__(self, out: Path, settings: dict, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        if not start_step:  # a new run (maybe --overwrite): no curves of an earlier one
            shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)
        self.writer = SummaryWriter(
            log_dir=str(out / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None, flush_secs=10
        )
        self.writer.add_text("settings", settings_table(settings), global_step=start_step)

    def write(self, record: dict):
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["step"])

    def close(self):
        self.writer.close()


def check_tensorboard():
    """Refuse --tensorboard up front when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise GptkitError(
            "--tensorboard needs the tensorboard package: pip install 'gptkit[tensorboard]' "
            "(from a clone: uv sync --extra tensorboard)"
        ) from None


def check_wandb():
    """Refuse --wandb up front without the wandb package or, to log online, without a login."""
    try:
        import wandb
    except ImportError:
        raise GptkitError(
            "--wandb needs the wandb package: pip install 'gptkit[wandb]' (from a clone: uv sync --extra wandb)"
        ) from None
    if wandb.setup().settings.mode in ("offline", "dryrun", "disabled"):
        return
    if not wandb.login(verify=False, prompt=False):
        raise GptkitError(
            "--wandb: not logged in to Weights & Biases: run `wandb login` (or set WANDB_API_KEY), "
            "or set WANDB_MODE=offline to log to the run folder and `wandb sync` later"
        )


class WandbSink:
    """A Weights & Biases run with the run's settings as its config and every numeric field of each record against
    its step. Its id is kept in RUN/wandb.json, so a resumed run continues the same wandb run. wandb's files go in
    the run folder (RUN/wandb), which is where offline runs wait for `wandb sync`."""

    def __init__(self, project: str, out: Path, settings: dict, resumed: bool):
        import wandb

        id_file = out / WANDB_RUN_FILE
        saved = json.loads(id_file.read_text()) if resumed and id_file.is_file() else {}
        run_id = saved.get("id") if saved.get("project") == project else None
        out.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=project, id=run_id, resume="allow", name=out.name, dir=str(out), config=settings
            )
        except Exception as e:  # wandb's errors (network, permissions) have no common base class
            raise GptkitError(
                f"wandb could not start the run: {e} (WANDB_MODE=offline logs to the run folder)"
            ) from None
        if run_id is None:
            write_json(id_file, {"project": project, "id": self.run.id})
        # A resumed wandb run continues from the step after the last one it holds: the steps a stopped run logged
        # after its last save come again, identical (resume is exact), and wandb would refuse them noisily.
        self.first_step = self.run.step

    def write(self, record: dict):
        if record["step"] >= self.first_step:
            self.run.log(scalars(record), step=record["step"])

    def close(self):
        self.run.finish()


class RunLog:
    """One record a step, written to every sink; closes them all however the run ends."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    @classmethod
    def open(cls, makers: list) -> "RunLog":
        """Make each sink in turn (each maker a function returning one); if one fails, close those already made."""
        log = cls([])
        try:
            for make in makers:
                log.sinks.append(make())
        except BaseException:
            log.__exit__(None, None, None)
            raise
        return log

    def write(self, record: dict):
        for sink in self.sinks:
            sink.write(record)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for sink in reversed(self.sinks):  # the last opened first: the live bar stops before wandb prints its summary
            sink.close()
