"""The checks of the files and run folder `gptkit train` names (check, which the train command runs before importing
torch), and the run folder it trains in when --out is left out. Importing this module does not import torch."""

import os
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.model.config import PRESETS
from gptkit.options.declare import fail_if, fallbacks
from gptkit.options.shared import check_hellaswag_file, check_not_int8, check_text
from gptkit.training.config import TrainConfig
from gptkit.training.runlock import RUN_FOLDER_IN_USE, RUN_LOCK_WAIT_S, check_not_held

DEFAULT_MODEL = fallbacks(TrainConfig)["model"]


def run_name(data: str, model: str) -> str:
    """<data>-<preset> from scratch, <data>-<checkpoint>-finetuned from a checkpoint (never the same folder)."""
    stem = Path(data).resolve().stem or "data"
    name = Path(model).stem if Path(model).suffix in (".pt", ".pth") else Path(model).name  # nanoGPT's ckpt.pt: ckpt
    return f"{stem}-{name}-finetuned" if model not in PRESETS else f"{stem}-{model}"


def default_out(cfg: TrainConfig) -> Path:
    return Path("checkpoints") / run_name(cfg.data, cfg.model or DEFAULT_MODEL)


def check(cfg: TrainConfig):
    """The checks of what the options name (their values were checked when cfg was made), none needing torch, the
    device or the model: DATA, a checkpoint to fine-tune, a HellaSwag file, the processes --fsdp needs, the run folder
    (one to resume; not in use: runfolder.lock_run_folder takes its lock later, this only refuses early)."""
    from gptkit.checkpoint.locate import resolve  # imported here, as in options.shared.check_checkpoint

    check_text(cfg.data)
    if cfg.model is not None and cfg.model not in PRESETS:
        if not Path(cfg.model).exists():
            raise GptkitError(
                f"unknown model '{cfg.model}': use a preset ({', '.join(PRESETS)}) or a checkpoint directory"
            )
        resolve(cfg.model)
        check_not_int8(cfg.model, "cannot be trained", "fine-tune the float checkpoint it was made from")
    fail_if(
        cfg.lora_rank is not None and not cfg.resume and (cfg.model is None or cfg.model in PRESETS),
        "--lora-rank trains adapters on a frozen checkpoint: give it as --model (a preset from scratch has nothing "
        "to adapt)",
    )
    fail_if(
        bool(cfg.fsdp) and int(os.environ.get("WORLD_SIZE", "1")) < 2,
        "--fsdp shards the model over several processes: start them with torchrun --nproc-per-node N (N >= 2)",
    )
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    fail_if(
        cfg.resume and not out.is_dir(), f"{out} does not exist: there is no run to resume (start one without --resume)"
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 takes the lock
        check_not_held(out, RUN_FOLDER_IN_USE, RUN_LOCK_WAIT_S)
    if cfg.hellaswag is not None:
        check_hellaswag_file(cfg.hellaswag)
