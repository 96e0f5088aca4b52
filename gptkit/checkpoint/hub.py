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
log lines. The fetching is hub_transfer.py's, the failures' messages hub_errors.py's.
"""

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gptkit import __version__
from gptkit.checkpoint.folder import read_metadata
from gptkit.checkpoint.hub_errors import hub_errors
from gptkit.checkpoint.hub_transfer import BIN_FILE, RichBar, check_reachable, console, fetch_weights, hub_log_as_status
from gptkit.checkpoint.huggingface import config_from_hf, convert_bin, from_hf_tensors
from gptkit.checkpoint.locate import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, is_checkpoint
from gptkit.checkpoint.tensors import read_safetensors_header
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES, write_tokenizer_files
from gptkit.errors import GptkitError
from gptkit.files import fsync, link_or_copy, read_json, write_json
from gptkit.model.config import GPTConfig
from gptkit.training.runlock import DOWNLOAD_FOLDER_IN_USE, folder_lock

KNOWN_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass
class Fetched:
    """What a download fetched (or found in the hub cache), before anything in the output folder changes."""

    hf_config: dict  # config.json as the repo has it
    config: GPTConfig
    commit: str
    weights_name: str  # model.safetensors or pytorch_model.bin
    weights: Path
    cached: bool  # whether weights is the hub cache's file (else fetched into the output folder)


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
    if holds_already(repo_id, out, wanted, force):
        return out
    # HF_ENDPOINT and HF_HUB_OFFLINE are read here, not when huggingface_hub was imported.
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    fetched = fetch_repo(repo_id, revision, out, endpoint, env_flag("HF_HUB_OFFLINE"), force)
    weights, cached = checked_weights(fetched, repo_id, out)
    install(fetched, weights, cached, out)
    write_json(
        out / METADATA_FILE,
        {
            "gptkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "repo": repo_id,
                "revision": wanted,
                "commit": fetched.commit,
                "files": [CONFIG_FILE, fetched.weights_name],
                "endpoint": endpoint,
            },
        },
    )
    console.print(f"downloaded {repo_id} ({wanted}, commit {fetched.commit[:12]}) to {out}")
    return out


def holds_already(repo_id: str, out: Path, wanted: str, force: bool) -> bool:
    """Whether out holds this download already (then nothing is fetched); refuses a folder that holds another
    checkpoint, unless force."""
    source = read_metadata(out).get("source", {}) if out.is_dir() else {}
    same = source.get("repo") == repo_id and wanted in (source.get("revision"), source.get("commit"))
    if same and is_checkpoint(out) and not force:
        if not all((out / name).is_file() for name in TOKENIZER_FILES):  # a download made before they were written
            write_tokenizer_files(out)
        console.print(
            f"{out} already holds {repo_id} ({wanted}, commit {source['commit'][:12]}): nothing to download "
            "(--force downloads it again)"
        )
        return True
    if not (same or force) and ((out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists()):
        raise GptkitError(
            f"{out} already holds a checkpoint other than {repo_id} ({wanted}): pass --force to replace it, "
            "or choose another --out"
        )
    return False


def fetch_repo(repo_id: str, revision: str | None, out: Path, endpoint: str, offline: bool, force: bool) -> Fetched:
    """config.json (through the hub cache, which resolves the revision to a commit) and the weights; from the hub
    cache alone when offline, or when the hub cannot be reached."""
    with hub_log_as_status(), hub_errors(repo_id, revision or "main", endpoint, offline, out) as failure:
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
    return Fetched(hf_cfg, config, commit, weights_name, weights, cached)


def checked_weights(fetched: Fetched, repo_id: str, out: Path) -> tuple[Path, bool]:
    """(the weights as a checked model.safetensors, whether it is the hub cache's file), before anything in out
    changes: a pytorch_model.bin converted beside out's files, a model.safetensors checked as it is."""
    if fetched.weights_name == BIN_FILE:
        console.print(f"converting {BIN_FILE} to {WEIGHTS_FILE}")
        converted = out / f".{WEIGHTS_FILE}.converted"
        convert_bin(fetched.weights, converted, fetched.config)
        return converted, False
    check_weights(fetched.weights, fetched.config, f"{repo_id}/{fetched.weights_name}")
    return fetched.weights, fetched.cached


def install(fetched: Fetched, weights: Path, cached: bool, out: Path):
    """Make out the checkpoint of the fetched files (gptkit.json aside): out holds the old weights or the new ones,
    never a config.json beside weights it does not describe."""
    (out / METADATA_FILE).unlink(missing_ok=True)
    (out / WEIGHTS_FILE).unlink(missing_ok=True)
    write_json(out / CONFIG_FILE, fetched.hf_config)
    if cached:
        link_or_copy(Path(os.path.realpath(weights)), out / WEIGHTS_FILE)  # the hub cache's blob, not its symlink
    else:
        fsync(weights)  # on the disk before it takes its name
        os.replace(weights, out / WEIGHTS_FILE)
    if fetched.weights_name == BIN_FILE and not fetched.cached:  # the fetched .bin, converted
        fetched.weights.unlink()
    write_tokenizer_files(out)


def check_weights(path: Path, config, source: str):
    """Fail now rather than at first use if a safetensors file does not fit the config (names and shapes)."""
    import torch

    header = read_safetensors_header(path)
    # Shapes only, on the meta device; the tied lm_head (if stored) cannot be compared without its data.
    shapes = {k: v["shape"] for k, v in header.items() if k not in ("__metadata__", "lm_head.weight")}
    tensors = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    from_hf_tensors(tensors, config, source)
