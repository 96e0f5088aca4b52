"""`gptkit download`: GPT-2 weights from the Hugging Face hub, as a gptkit checkpoint directory.

Only config.json and the weights are fetched (model.safetensors, else pytorch_model.bin, converted), never the other
formats the repos carry; the tokenizer files that transformers loads are written from GPT-2's, which gptkit ships
(tokenizer_files.py). config.json goes through the hub's cache, which also resolves the revision to a commit and
works offline. Weights already in that cache are linked from it; otherwise they are fetched with huggingface_hub's
http_get into a hidden `.incomplete` file in the output directory that a later run resumes (hf_hub_download deletes
its partial files on failure, so it cannot resume). The checkpoint's model.safetensors appears, by a rename, only
once it is complete and checked.

Network failures: a hub that cannot be reached at all (its name does not resolve, the connection is refused, no
route) is found by one request before anything else and reported at once, instead of huggingface_hub's 23 s of
retries; the hub cache is then used if it holds the files. Transient failures (timeouts, resets, 5xx, 429) are
retried, by huggingface_hub and by fetch(), shown as one status line that updates in place instead of the library's
log lines.
"""

import errno
import logging
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console
from rich.progress import DownloadColumn, TransferSpeedColumn

from gptkit import __version__
from gptkit.checkpoint.folder import read_metadata
from gptkit.checkpoint.huggingface import config_from_hf, convert_bin, from_hf_tensors
from gptkit.checkpoint.locate import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, is_checkpoint
from gptkit.checkpoint.tensors import read_safetensors_header
from gptkit.errors import GptkitError
from gptkit.files import data_hash, read_json, write_json
from gptkit.progress import progress_bar
from gptkit.training.runlock import DOWNLOAD_FOLDER_IN_USE, folder_lock
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES, write_tokenizer_files
from gptkit.units import human_bytes

KNOWN_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
BIN_FILE = "pytorch_model.bin"
DEFAULT_ENDPOINT = "https://huggingface.co"
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


def unreachable_reason(error: BaseException) -> str | None:
    """Why a connection failed for good (waiting will not fix it), or None for a failure worth retrying."""
    while error is not None:
        if isinstance(error, socket.gaierror):
            return "its host name does not resolve"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route to it"
        error = error.__cause__ or error.__context__
    return None


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


def partial_bytes(out: Path) -> int:
    """Bytes of the partial downloads (.incomplete files) that a next run would resume from."""
    return sum(p.stat().st_size for p in out.glob(".*.incomplete")) if out.is_dir() else 0


def try_again(out: Path) -> str:
    kept = partial_bytes(out)
    return f"run again to resume ({human_bytes(kept)} kept)" if kept else "run again later"


def repo_for(name: str) -> str:
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]
    if "/" not in name:
        raise GptkitError(f"unknown model '{name}': give one of {', '.join(KNOWN_MODELS)}, or a hub repo id org/name")
    return name


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "on", "yes", "true")


def download(name: str, out: Path | None = None, revision: str | None = None, force: bool = False) -> Path:
    """Download a GPT-2 from the hub into the checkpoint directory `out` (default checkpoints/<name>), holding the
    folder's lock (runlock) as train and eval do: a second download, or a run, in the same folder is refused."""
    repo_id = repo_for(name)
    out = Path(out) if out else Path("checkpoints") / name.replace("/", "--")
    with folder_lock(out, "gptkit download", DOWNLOAD_FOLDER_IN_USE):
        return download_into(repo_id, out, revision, force)


def download_into(repo_id: str, out: Path, revision: str | None, force: bool) -> Path:
    """download's work, with out's lock held."""
    wanted = revision or "main"
    source = read_metadata(out).get("source", {}) if out.is_dir() else {}
    same = source.get("repo") == repo_id and wanted in (source.get("revision"), source.get("commit"))
    if same and is_checkpoint(out) and not force:
        if not all((out / name).is_file() for name in TOKENIZER_FILES):  # a download made before they were written
            write_tokenizer_files(out)
        console.print(
            f"{out} already holds {repo_id} ({wanted}, commit {source['commit'][:12]}): nothing to download "
            "(--force downloads it again)"
        )
        return out
    if not (same or force) and ((out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists()):
        raise GptkitError(
            f"{out} already holds a checkpoint other than {repo_id} ({wanted}): pass --force to replace it, "
            "or choose another --out"
        )

    # HF_ENDPOINT and HF_HUB_OFFLINE are read here, not when huggingface_hub was imported.
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    offline = env_flag("HF_HUB_OFFLINE")
    with hub_log_as_status(), hub_errors(repo_id, wanted, endpoint, offline, out) as failure:
        from huggingface_hub import hf_hub_download

        if not offline:
            failure.unreachable = check_reachable(endpoint)
            offline = failure.unreachable is not None  # if so, what the hub cache holds may still do

        config_file = Path(
            hf_hub_download(
                repo_id, CONFIG_FILE, revision=revision, endpoint=endpoint, local_files_only=offline, tqdm_class=RichBar
            )
        )
        commit = config_file.parent.name  # the cache keeps files under snapshots/<commit>/
        hf_cfg = read_json(config_file)
        config = config_from_hf(hf_cfg, repo_id)
        out.mkdir(parents=True, exist_ok=True)
        weights_name, weights, cached = fetch_weights(repo_id, commit, out, endpoint, offline, force)
    if failure.unreachable:
        console.print(f"could not reach {endpoint} ({failure.unreachable}): used the hub cache")

    # Check (or convert) the weights before touching what `out` holds.
    fetched_bin = weights if weights_name == BIN_FILE and not cached else None
    if weights_name == BIN_FILE:
        console.print(f"converting {BIN_FILE} to {WEIGHTS_FILE}")
        converted = out / f".{WEIGHTS_FILE}.converted"
        convert_bin(weights, converted, config)
        weights, cached = converted, False
    else:
        check_weights(weights, config, f"{repo_id}/{weights_name}")

    # `out` now holds the old weights or the new ones, never a config.json beside weights it does not describe.
    (out / METADATA_FILE).unlink(missing_ok=True)
    (out / WEIGHTS_FILE).unlink(missing_ok=True)
    write_json(out / CONFIG_FILE, hf_cfg)
    if cached:
        link_or_copy(weights, out / WEIGHTS_FILE)
    else:
        os.replace(weights, out / WEIGHTS_FILE)
    if fetched_bin:
        fetched_bin.unlink()
    write_tokenizer_files(out)
    write_json(
        out / METADATA_FILE,
        {
            "gptkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "repo": repo_id,
                "revision": wanted,
                "commit": commit,
                "files": [CONFIG_FILE, weights_name],
                "endpoint": endpoint,
            },
        },
    )
    console.print(f"downloaded {repo_id} ({wanted}, commit {commit[:12]}) to {out}")
    return out


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


def check_weights(path: Path, config, source: str):
    """Fail now rather than at first use if a safetensors file does not fit the config (names and shapes)."""
    import torch

    header = read_safetensors_header(path)
    # Shapes only, on the meta device; the tied lm_head (if stored) cannot be compared without its data.
    shapes = {k: v["shape"] for k, v in header.items() if k not in ("__metadata__", "lm_head.weight")}
    tensors = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    from_hf_tensors(tensors, config, source)


def link_or_copy(src: Path, dst: Path):
    """Put the hub cache's file at dst without doubling disk use where the filesystem allows."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(os.path.realpath(src), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@contextmanager
def hub_errors(repo_id: str, revision: str, endpoint: str, offline: bool, out: Path):
    """Turn huggingface_hub's exceptions into one-line messages that say what to do. The block may set the yielded
    object's `unreachable` to why the hub cannot be reached (and go on from the hub cache)."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def network_failure(e: BaseException | None) -> str | None:
        if isinstance(e, httpx2.TransportError):
            if reason := unreachable_reason(e):
                return f"cannot reach {endpoint} ({reason}): check the network and HF_ENDPOINT"
            return f"connection to {endpoint} failed ({e or type(e).__name__}): {try_again(out)}"
        if isinstance(e, HfHubHTTPError):
            status = e.response.status_code
            if status in (401, 403):
                return f"not allowed to download {repo_id} (HTTP {status}): set HF_TOKEN"
            return f"{endpoint} answered HTTP {status} for {repo_id}: {try_again(out)}"
        if isinstance(e, FileMetadataError):
            return f"{endpoint} does not answer like a Hugging Face hub: check HF_ENDPOINT"
        return None

    failure = SimpleNamespace(unreachable=None)
    try:
        yield failure
    except GatedRepoError:
        raise GptkitError(
            f"{repo_id} is gated: accept its conditions at {endpoint}/{repo_id} "
            "and set HF_TOKEN to a token of that account"
        ) from None
    except RepositoryNotFoundError:
        raise GptkitError(f"{repo_id} not found on {endpoint} (if it is private, set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise GptkitError(f"{repo_id} has no revision '{revision}'") from None
    except RemoteEntryNotFoundError:
        raise GptkitError(f"{repo_id} has no {CONFIG_FILE}: it is not a transformers model") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if failure.unreachable:
            raise GptkitError(
                f"cannot reach {endpoint} ({failure.unreachable}), and {repo_id} ({revision}) is not in the hub cache "
                "to work offline from (as HF_HUB_OFFLINE=1 does): check the network and HF_ENDPOINT"
            ) from None
        if offline:
            raise GptkitError(f"HF_HUB_OFFLINE is set and {repo_id} is not in the hub cache") from None
        # huggingface_hub raises this when it fell back to its cache for want of an answer: say what the answer was
        raise GptkitError(network_failure(e.__cause__) or f"cannot reach {endpoint}: {try_again(out)}") from None
    except (httpx2.TransportError, HfHubHTTPError, FileMetadataError) as e:
        raise GptkitError(network_failure(e)) from None
    except HFValidationError:
        raise GptkitError(f"'{repo_id}' is not a valid hub repo id (expected org/name)") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise GptkitError(f"no space left on the device of {out}: free some space and run again") from None
        if e.errno is None:  # http_get's size check, whose message spans several lines
            raise GptkitError(f"download of {repo_id} failed: {str(e).splitlines()[0]} {try_again(out)}") from None
        raise
