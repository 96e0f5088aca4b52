"""Fetching a repo's files for `gptkit download`: the weights from the hub cache where it holds them, else over HTTP
into a hidden `.incomplete` file in the output folder that a later run resumes, checked against the hub's sha256; the
progress bar, and one status line for what is being retried (transient failures: timeouts, resets, 5xx, 429, retried
by huggingface_hub and by fetch) in place of huggingface_hub's log lines.
"""

import logging
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import DownloadColumn, TransferSpeedColumn

from gptkit.checkpoint.hub_errors import unreachable_reason
from gptkit.checkpoint.locate import WEIGHTS_FILE
from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.progress import progress_bar
from gptkit.units import human_bytes

BIN_FILE = "pytorch_model.bin"
RETRY_WAITS = (1, 2, 4, 8, 8)  # seconds before each retry of a transient failure (huggingface_hub's own schedule)
# Answers that fetch retries; huggingface_hub's http_get retries 408 and 429 itself, on the same schedule, so
# retrying those here too would multiply the tries.
RETRY_STATUSES = (500, 502, 503, 504)

console = Console(stderr=True, highlight=False, soft_wrap=True)


class RetryStatus:
    """One transient line saying what is being retried; it updates in place and disappears when done."""

    def __init__(self):
        self.status = None

    def show(self, text: str):
        if self.status is None:
            self.status = console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def close(self):
        if self.status is not None:
            self.status.stop()
            self.status = None


retry_line = RetryStatus()


class RichBar:
    """The part of tqdm's interface huggingface_hub drives, drawn as a rich progress bar with bytes and speed."""

    def __init__(self, *, desc=None, total=None, initial=0, **_):
        self.progress = progress_bar(DownloadColumn(), TransferSpeedColumn(), console=console)
        name = (desc or "").rsplit("/", 1)[-1]  # huggingface_hub passes a file's URL as desc
        self.task = self.progress.add_task(name, total=total, completed=initial)

    def __enter__(self):
        retry_line.close()  # bytes are flowing again: whatever was being retried worked
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, n=1):
        self.progress.advance(self.task, n)


class HubLogAsStatus(logging.Handler):
    """huggingface_hub's warnings (a failure, then "Retrying in 4s [Retry 3/5]."), shown on the status line."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.problem = ""

    def emit(self, record: logging.LogRecord):
        message = record.getMessage().splitlines()[0]
        message = re.sub(r" thrown while requesting \w+ https?://\S*/", " for ", message)  # a URL: its file's name
        if message.startswith(("Retrying", "Rate limited")) and self.problem:
            message = f"{self.problem}: {message[0].lower()}{message[1:]}"
        else:
            self.problem = message
        retry_line.show(message)


@contextmanager
def hub_log_as_status():
    """Route huggingface_hub's log lines to the retry line while the block runs."""
    import huggingface_hub.utils.logging  # noqa: F401  (gives the library's logger the handler swapped here)

    hub_logger = logging.getLogger("huggingface_hub")
    handlers, propagate = hub_logger.handlers, hub_logger.propagate
    hub_logger.handlers, hub_logger.propagate = [HubLogAsStatus()], False
    try:
        yield
    finally:
        hub_logger.handlers, hub_logger.propagate = handlers, propagate
        retry_line.close()


def check_reachable(endpoint: str) -> str | None:
    """One request to the endpoint: None if it answers (anything) or fails in a way worth retrying later, else the
    reason it cannot be reached."""
    import httpx2
    from huggingface_hub import constants, get_session

    try:
        get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except httpx2.ConnectError as e:
        return unreachable_reason(e)
    except httpx2.TransportError:  # timeouts and the like: the downloads' retries deal with them
        pass
    return None


def fetch_weights(repo_id, commit, out: Path, endpoint, offline, force) -> tuple[str, Path, bool]:
    """(file name, local path, whether it is the hub cache's) of the repo's weights, fetched if need be."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if not force:
        for filename in (WEIGHTS_FILE, BIN_FILE):
            cached = try_to_load_from_cache(repo_id, filename, revision=commit)
            if isinstance(cached, str):
                console.print(f"{filename} found in the hub cache")
                return filename, Path(cached), True
    if offline:
        raise LocalEntryNotFoundError(f"the weights of {repo_id} are not in the hub cache")
    for filename in (WEIGHTS_FILE, BIN_FILE):
        url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
        try:
            # the timeout is get_hf_file_metadata's default, read now rather than when huggingface_hub was imported
            meta = get_hf_file_metadata(
                url, endpoint=endpoint, retry_on_errors=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
            )
        except EntryNotFoundError:
            continue
        part = out / f".{filename}.{meta.etag}.incomplete"
        for stale in out.glob(f".{filename}.*.incomplete"):  # partial downloads of another version of the file
            if stale != part:
                stale.unlink()
        fetch(url, filename, part, meta.size)
        if re.fullmatch(r"[0-9a-f]{64}", meta.etag or "") and data_hash([part]) != meta.etag:
            part.unlink()
            raise GptkitError(f"{repo_id}/{filename} arrived corrupted (checksum mismatch): run again to fetch it anew")
        return filename, part, False
    raise GptkitError(f"{repo_id} has neither {WEIGHTS_FILE} nor {BIN_FILE}")


def fetch(url: str, filename: str, part: Path, size: int | None):
    """Append the rest of the file at url to part, which holds its first bytes from earlier runs.

    http_get itself resumes after failed connections, timeouts and bodies cut short; the failures it passes on that
    may go away (an HTTP 5xx, a connection reset) are retried here, from what reached the disk."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    done = part.stat().st_size if part.exists() else 0
    if size is not None and done > size:
        part.unlink()
        done = 0
    if done:
        console.print(f"resuming {filename} at {human_bytes(done)}")
    free = shutil.disk_usage(part.parent).free
    if size is not None and size - done > free:
        raise GptkitError(
            f"not enough disk space in {part.parent}: {filename} needs {human_bytes(size - done)} more, "
            f"{human_bytes(free)} free"
        )
    for attempt, wait in enumerate((*RETRY_WAITS, None), 1):
        try:
            with open(part, "ab") as f:
                http_get(
                    url,
                    f,
                    resume_size=part.stat().st_size,
                    headers=build_hf_headers(),
                    expected_size=size,
                    displayed_filename=filename,
                    tqdm_class=RichBar,
                )
            return
        except Exception as e:
            problem = transient_problem(e)
            if wait is None or problem is None:
                raise
            retry_line.show(f"{filename}: {problem}: retrying in {wait}s [Retry {attempt}/{len(RETRY_WAITS)}]")
            time.sleep(wait)


def transient_problem(error: Exception) -> str | None:
    """What went wrong, if it is a failure of the kind that goes away (a 5xx answer, a reset connection)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response.status_code in RETRY_STATUSES:
        return f"HTTP {error.response.status_code}"
    if isinstance(error, (httpx2.ReadError, httpx2.WriteError)) and unreachable_reason(error) is None:
        return str(error) or type(error).__name__
    return None
