"""The progress bars of gptkit, in one style: a label, a bar, the caller's count and rate columns, the time left, on
stderr. rich is imported only when a bar is made, so that importing this module (and `gptkit --help`) stays fast."""

import time


def progress_bar(*middle, label: str = "{task.description}", console=None, transient: bool = False, enabled=True):
    """A rich Progress: label, a bar, the middle columns (a str is a TextColumn's format), the time left.
    console: rich Console to draw on (default: stderr); transient: the bar goes when it stops; enabled=False draws
    nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(c) if isinstance(c, str) else c for c in middle]
    return Progress(
        TextColumn(label),
        BarColumn(),
        *columns,
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=transient,
        disable=not enabled,
    )


RATE = "{task.fields[rate]}"  # a column showing a task's rate field, as track and PrepareProgress set it


def track(bar, description: str, unit: str):
    """A progress(done, total) callback that advances a new task of bar and shows the throughput in unit/s."""
    task = bar.add_task(description, total=None, rate="")
    start = time.perf_counter()

    def progress(done: int, total: int):
        rate = done / max(time.perf_counter() - start, 1e-9)
        bar.update(task, completed=done, total=total, rate=f"{rate:,.0f} {unit}/s")

    return progress


def count_bar(enabled: bool):
    """A transient bar for track's tasks: done/total and the throughput."""
    from rich.progress import MofNCompleteColumn

    return progress_bar(MofNCompleteColumn(), RATE, transient=True, enabled=enabled)


class PrepareProgress:
    """A progress(done_bytes, total_bytes, tokens) callback showing a rich bar on a terminal's stderr: MB, MB/s,
    tokens/s and time left."""

    def __init__(self, enabled: bool = True, label: str = "tokenizing"):
        self.enabled = enabled
        self.label = label
        self.bar = None
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, tokens: int):
        if not self.enabled:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import DownloadColumn, TransferSpeedColumn

            console = Console(stderr=True)
            if not console.is_terminal:  # a bar is for people; in a log or a pipe its stop leaves a blank line
                self.enabled = False
                return
            self.bar = progress_bar(
                DownloadColumn(), TransferSpeedColumn(), RATE, label=self.label, console=console, transient=True
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total, rate="")
        rate = tokens / max(1e-9, time.perf_counter() - self.started)
        self.bar.update(self.task, completed=done, total=total, rate=f"{rate:,.0f} tokens/s")

    def close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
