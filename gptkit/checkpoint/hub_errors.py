"""A download's failures as one-line messages that say what to do: huggingface_hub's exceptions (a gated, missing or
invalid repo, a missing revision or file, the hub cache lacking what offline work needs), the network's (a hub that
cannot be reached at all, or failed answers) and the disk's (full). What a next run would resume from is counted in
the message ("run again to resume (12.3 MB kept)")."""

import errno
import socket
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from gptkit.checkpoint.locate import CONFIG_FILE
from gptkit.errors import GptkitError
from gptkit.units import human_bytes


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


def partial_bytes(out: Path) -> int:
    """Bytes of the partial downloads (.incomplete files) that a next run would resume from."""
    return sum(p.stat().st_size for p in out.glob(".*.incomplete")) if out.is_dir() else 0


def try_again(out: Path) -> str:
    kept = partial_bytes(out)
    return f"run again to resume ({human_bytes(kept)} kept)" if kept else "run again later"


@contextmanager
def hub_errors(repo_id: str, revision: str, endpoint: str, offline: bool, out: Path):
    """Turn huggingface_hub's exceptions into one-line messages that say what to do. The block may set the yielded
    object's `unreachable` to why the hub cannot be reached (and go on from the hub cache)."""
    failure = SimpleNamespace(unreachable=None)
    try:
        yield failure
    except Exception as e:
        message = failure_message(e, repo_id, revision, endpoint, offline, out, failure.unreachable)
        if message is None:
            raise
        raise GptkitError(message) from None


def failure_message(
    e: Exception, repo_id: str, revision: str, endpoint: str, offline: bool, out: Path, unreachable: str | None
) -> str | None:
    """The one line for a failure of a download (see hub_errors); None for an exception that is none of those."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    if message := repo_failure(e, repo_id, revision, endpoint):
        return message
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if unreachable:
            return (
                f"cannot reach {endpoint} ({unreachable}), and {repo_id} ({revision}) is not in the hub cache "
                "to work offline from (as HF_HUB_OFFLINE=1 does): check the network and HF_ENDPOINT"
            )
        if offline:
            return f"HF_HUB_OFFLINE is set and {repo_id} is not in the hub cache"
        # huggingface_hub raises this when it fell back to its cache for want of an answer: say what the answer was
        return network_failure(e.__cause__, repo_id, endpoint, out) or f"cannot reach {endpoint}: {try_again(out)}"
    if isinstance(e, (httpx2.TransportError, HfHubHTTPError, FileMetadataError)):
        return network_failure(e, repo_id, endpoint, out)
    if isinstance(e, HFValidationError):
        return f"'{repo_id}' is not a valid hub repo id (expected org/name)"
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return f"no space left on the device of {out}: free some space and run again"
        if e.errno is None:  # http_get's size check, whose message spans several lines
            return f"download of {repo_id} failed: {str(e).splitlines()[0]} {try_again(out)}"
    return None


def repo_failure(e: Exception, repo_id: str, revision: str, endpoint: str) -> str | None:
    """The one line for a repo that cannot be downloaded as asked: gated, missing, without the revision or a
    config.json."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):  # before RepositoryNotFoundError, which it is a kind of
        return (
            f"{repo_id} is gated: accept its conditions at {endpoint}/{repo_id} "
            "and set HF_TOKEN to a token of that account"
        )
    if isinstance(e, RepositoryNotFoundError):
        return f"{repo_id} not found on {endpoint} (if it is private, set HF_TOKEN)"
    if isinstance(e, RevisionNotFoundError):
        return f"{repo_id} has no revision '{revision}'"
    if isinstance(e, RemoteEntryNotFoundError):
        return f"{repo_id} has no {CONFIG_FILE}: it is not a transformers model"
    return None


def network_failure(e: BaseException | None, repo_id: str, endpoint: str, out: Path) -> str | None:
    """The one line for a failed connection or a failed answer of the hub; None for anything else."""
    import httpx2
    from huggingface_hub.errors import FileMetadataError, HfHubHTTPError

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
