"""`gptkit plot`: the loss curves of one or more training runs, read from their metrics.jsonl (no torch). With an
output file, drawn by matplotlib (PNG, SVG or PDF); without one, drawn in the terminal in braille dots, so it works
over ssh."""

import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from gptkit.errors import GptkitError
from gptkit.options import PlotOptions
from gptkit.training.runlog import METRICS_FILE, read_metrics

# matplotlib's default colour cycle (tab10), so a run has the same colour in the terminal and in a file
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Curves:
    """One run's curves against the chosen x: the raw and smoothed training loss, and the validation loss."""

    name: str
    x: list[float]
    loss: list[float]
    smoothed: list[float]
    val_x: list[float]
    val_loss: list[float]
    outcome: str = ""  # the steps, tokens and time to --target-loss, or the best val loss and its step


def outcome(records: list[dict]) -> str:
    """The legend's note of a run: where it reached its --target-loss, else its best validation loss."""
    reached = next((r["target_reached"] for r in records if isinstance(r.get("target_reached"), dict)), None)
    if reached is not None:
        return (
            f"val <= {reached['target_loss']:g} at step {reached['step']}, {reached['tokens_seen']:,} tokens, "
            f"{reached['wall_time_s']:.0f} s"
        )
    vals = [(r["val_loss"], r["step"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    return f"best val {min(vals)[0]:.3f} at step {min(vals)[1]}" if vals else ""


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased at the start (TensorBoard's smoothing)."""
    out, average = [], 0.0
    for i, v in enumerate(values, 1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight**i))
    return out


def x_values(records: list[dict], x: str) -> list[float]:
    if x == "step":
        return [r["step"] for r in records]
    if x == "tokens":
        return [r["tokens_seen"] for r in records]
    elapsed, out = 0.0, []  # time: seconds spent in training steps (evaluations and saves not counted)
    for r in records:
        elapsed += r["step_time_s"]
        out.append(elapsed)
    return out


def load_curves(run: Path, x: str, weight: float, warn) -> Curves:
    """A run folder's curves; warn(line) is told about lines of metrics.jsonl that could not be read."""
    metrics = run / METRICS_FILE if run.is_dir() else run
    if not run.exists():
        raise GptkitError(f"{run} does not exist: give a run folder written by gptkit train")
    if run.is_dir() and not metrics.is_file():
        raise GptkitError(
            f"{run} is not a run folder (it has no {METRICS_FILE}): give a folder written by gptkit train"
        )
    records, unreadable = read_metrics(metrics)
    if unreadable:
        warn(f"warning: {metrics}: skipped {unreadable} unreadable line(s) (cut short by a crash mid-write?)")
    if not records:
        raise GptkitError(f"{metrics} holds no training steps yet: plot it once the run has done a step")
    xs = x_values(records, x)
    losses = [r["loss"] for r in records]
    val = [(xv, r["val_loss"]) for xv, r in zip(xs, records) if r.get("val_loss") is not None]
    name = (run if run.is_dir() else run.parent).resolve().name
    return Curves(name, xs, losses, smooth(losses, weight), [v[0] for v in val], [v[1] for v in val], outcome(records))


def x_label(x: str, unit: str = "") -> str:
    return {"step": "step", "tokens": "tokens seen", "time": f"training time ({unit})"}[x]


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit that suits a duration, and seconds per unit."""
    return ("s", 1.0) if seconds < 120 else ("min", 60.0) if seconds < 7200 else ("h", 3600.0)


def plot(options: PlotOptions):
    """`gptkit plot`: the runs' curves on the terminal, or in options.out; warnings (lines skipped) on stderr."""
    errors = Console(stderr=True, highlight=False, soft_wrap=True)

    def warn(line: str):
        errors.print(line, style="yellow")

    draw(options.runs, options.out, options.x, options.log, options.smooth, Console(highlight=False), warn)
    if options.out is not None:
        errors.print(f"wrote {options.out}")


def draw(runs: list[Path], out: Path | None, x: str, log: bool, weight: float, console, warn) -> None:
    """Draw the runs' loss curves into out (by its extension) or, without out, on the console; warn(line) is told
    about lines of metrics.jsonl that could not be read."""
    curves = [load_curves(run, x, weight, warn) for run in runs]
    names = [c.name for c in curves]
    for c, run in zip(curves, runs):
        if names.count(c.name) > 1:  # two folders of the same name: tell them apart by their paths
            c.name = str(run)
    unit, scale = "", 1.0
    if x == "time":
        unit, scale = time_unit(max(c.x[-1] for c in curves))
        for c in curves:
            c.x = [v / scale for v in c.x]
            c.val_x = [v / scale for v in c.val_x]
    if out is None:
        console.print(draw_text(curves, x_label(x, unit), log, console.width), highlight=False)
    else:
        write_file(curves, out, x_label(x, unit), log)


# --- a file, with matplotlib -----------------------------------------------------------------------------------------


def write_file(curves: list[Curves], out: Path, label: str, log: bool):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GptkitError(
            "writing a plot file needs matplotlib: pip install 'gptkit[plot]' (from a clone: uv sync --extra plot); "
            "without --out the plot is drawn in the terminal"
        ) from None
    from gptkit.files import atomic_path

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for c, colour in zip(curves, COLOURS * len(curves)):
        ax.plot(c.x, c.loss, color=colour, alpha=0.2, linewidth=0.8)
        ax.plot(c.x, c.smoothed, color=colour, linewidth=1.8, label=f"{c.name} train")
        if c.val_x:
            label = f"{c.name} val ({c.outcome})"
            ax.plot(c.val_x, c.val_loss, color=colour, linestyle="--", marker="o", markersize=4, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=out.suffix.lower().lstrip("."))
    except OSError as e:
        raise GptkitError(f"cannot write {out}: {e.strerror or e}: choose another --out") from None


# --- the terminal, in braille dots -----------------------------------------------------------------------------------

# A braille character is a cell of 2 x 4 dots; the bit of each dot, by (column, row) within the cell.
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
PLOT_ROWS = 16
VAL_MARK = "●"


def short_number(v: float) -> str:
    """A tick label of at most 7 characters."""
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= size:
                return f"{v / size:.3g}{unit}"
        return f"{v:.1e}"
    return f"{v:.4g}"


class Canvas:
    """Braille cells, each with the colour of the last curve drawn through it, and markers over them."""

    def __init__(self, columns: int, rows: int):
        self.columns, self.rows = columns, rows
        self.bits = [[0] * columns for _ in range(rows)]
        self.colour = [[None] * columns for _ in range(rows)]
        self.marks = {}

    def dot(self, dx: int, dy: int, colour: str):
        """Set the dot at (dx, dy), counted from the top left, in dots."""
        column, row = dx // 2, dy // 4
        if 0 <= column < self.columns and 0 <= row < self.rows:
            self.bits[row][column] |= DOT_BITS[dx % 2][dy % 4]
            self.colour[row][column] = colour

    def line(self, a: tuple[int, int], b: tuple[int, int], colour: str):
        steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for i in range(steps + 1):
            self.dot(round(a[0] + (b[0] - a[0]) * i / steps), round(a[1] + (b[1] - a[1]) * i / steps), colour)

    def mark(self, dx: int, dy: int, colour: str):
        if 0 <= dx // 2 < self.columns and 0 <= dy // 4 < self.rows:
            self.marks[(dy // 4, dx // 2)] = colour

    def row_text(self, row: int):
        from rich.text import Text

        text = Text()
        for column in range(self.columns):
            if (row, column) in self.marks:
                text.append(VAL_MARK, style=self.marks[(row, column)])
            else:
                bits = self.bits[row][column]
                text.append(chr(0x2800 + bits) if bits else " ", style=self.colour[row][column])
        return text


def draw_text(curves: list[Curves], label: str, log: bool, width: int):
    """The smoothed training loss (lines) and validation loss (●) of every run, in a plot `width` characters wide."""
    from rich.console import Group
    from rich.text import Text

    ys = [v for c in curves for v in c.smoothed + c.val_loss]
    if log and min(ys) <= 0:
        raise GptkitError("a loss of 0 or less cannot go on a log scale: leave out --log")
    scale = math.log if log else float
    y_low, y_high = scale(min(ys)), scale(max(ys))
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    x_low, x_high = min(c.x[0] for c in curves), max(c.x[-1] for c in curves)
    x_span = (x_high - x_low) or 1

    tick_labels = [short_number(math.exp(v) if log else v) for v in (y_high, (y_low + y_high) / 2, y_low)]
    margin = max(map(len, tick_labels)) + 2
    canvas = Canvas(max(10, width - margin), PLOT_ROWS)
    dots_x, dots_y = canvas.columns * 2 - 1, canvas.rows * 4 - 1

    def to_dots(xv: float, yv: float) -> tuple[int, int]:
        return round((xv - x_low) / x_span * dots_x), round((y_high - scale(yv)) / (y_high - y_low) * dots_y)

    for c, colour in zip(curves, COLOURS * len(curves)):
        dots = [to_dots(xv, yv) for xv, yv in zip(c.x, c.smoothed)]
        points = [p for i, p in enumerate(dots) if i == 0 or p != dots[i - 1]]  # thousands of steps, fewer dots
        for a, b in zip(points, points[1:] or points):
            canvas.line(a, b, colour)
        for xv, yv in zip(c.val_x, c.val_loss):
            canvas.mark(*to_dots(xv, yv), colour)

    lines = []
    label_rows = {0: tick_labels[0], canvas.rows // 2: tick_labels[1], canvas.rows - 1: tick_labels[2]}
    for row in range(canvas.rows):
        tick = label_rows.get(row, "")
        lines.append(Text(f"{tick:>{margin - 2}} {'┤' if tick else '│'}", style="dim") + canvas.row_text(row))
    lines.append(Text(" " * (margin - 1) + "└" + "─" * canvas.columns, style="dim"))
    low, high = short_number(x_low), short_number(x_high)
    gap = canvas.columns - len(low) - len(high)
    axis = low + label.center(gap) + high if gap > len(label) + 2 else low + " " * max(1, gap) + high
    lines.append(Text(" " * margin + axis, style="dim"))
    for c, colour in zip(curves, COLOURS * len(curves)):  # one line a run: its name and outcome
        name = c.name + (f": {c.outcome}" if c.outcome else "")
        lines.append(Text(" " * margin).append("━━ ", style=colour).append(name))
    note = f"lines: training loss, smoothed; {VAL_MARK}: validation loss{'; log scale' if log else ''}"
    lines.append(Text(" " * margin + note, style="dim"))
    return Group(*lines)
