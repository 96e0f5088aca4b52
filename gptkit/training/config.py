"""What `gptkit train` was asked for (TrainConfig), its checks that need no torch (check, which cli.py runs before
importing torch), every default filled in and checked (resolve), and the rules for resuming a run with other options
(merge_for_resume). Importing this module does not import torch."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.checkpoint.locate import resolve as resolve_checkpoint
from gptkit.model.config import LORA_TARGETS, PRESETS, GPTConfig, LoraSettings
from gptkit.errors import GptkitError
from gptkit.options import (
    DTYPE_NAMES,
    check_device,
    check_dtype,
    check_hellaswag_file,
    check_not_int8,
    check_text,
    fail_if,
)
from gptkit.training.runlock import RUN_FOLDER_IN_USE, RUN_LOCK_WAIT_S, check_not_held

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("adamw", "muon")
ADAMW_LR, ADAMW_FINE_TUNING_LR = 6e-4, 3e-5
MUON_LR, MUON_FINE_TUNING_LR = 0.02, 1e-3
SHAPE = ("n_layer", "n_head", "n_embd")  # the options that set a model's shape from scratch (with block_size)


@dataclass
class TrainConfig:
    """What `gptkit train` was asked for. None means "the default" (see resolve), which for a resumed run is
    the value the run was started with."""

    data: str
    model: str | None = None  # preset name or checkpoint directory; default gpt2
    out: str | None = None  # default checkpoints/<data name>-<model name>
    steps: int | None = None  # optimizer steps; default 1000
    batch_size: int | None = None  # sequences per micro-step per process; default 4 on CPU, 16 on GPU
    block_size: int | None = None  # tokens per sequence; default min(256, context) on CPU, the context on GPU
    n_layer: int | None = None  # from scratch: the preset's shape, overridden
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None  # default 0.0 from scratch, the checkpoint's own when fine-tuning
    grad_accum: int | None = None  # micro-steps per optimizer step; default 1, or from tokens_per_step
    tokens_per_step: int | None = None  # global tokens per optimizer step (sets grad_accum)
    optimizer: str | None = None  # adamw or muon; default adamw
    lr: float | None = None  # peak learning rate (Muon's with muon); default: see default_lr
    adam_lr: float | None = None  # with muon: AdamW's peak learning rate; default AdamW's lr
    min_lr: float | None = None  # end of the cosine decay; default lr / 10
    warmup_steps: int | None = None  # default steps / 20
    weight_decay: float | None = None  # default 0.1
    eval_every: int | None = None  # default 250; 0 evaluates at the end only
    eval_tokens: int | None = None  # validation tokens per evaluation; default 20 global micro-batches
    hellaswag: str | None = None  # a HellaSwag jsonl file scored at each evaluation
    hellaswag_examples: int | None = None  # its first N examples; default 500
    save_every: int | None = None  # default 500; 0 saves at the end only
    val_fraction: float | None = None  # default 0.1
    dtype: str | None = None  # auto, float32, bfloat16; default auto
    device: str | None = None  # auto, cpu, cuda, cuda:N, mps; default auto
    compile: bool | None = None
    activation_checkpointing: bool | None = None  # recompute each block's activations in the backward; default off
    fsdp: bool | None = None  # under torchrun: shard weights, gradients and optimizer state (FSDP2); default off
    lora_rank: int | None = None  # train LoRA adapters of this rank on the frozen checkpoint --model; default: no LoRA
    lora_alpha: float | None = None  # the adapters' scale alpha / rank; default 2 * rank
    lora_dropout: float | None = None  # dropout on the adapters' input; default 0.0
    lora_targets: str | None = None  # comma-separated LORA_TARGETS names; default attn
    seed: int | None = None  # default 1337
    tensorboard: bool | None = None  # TensorBoard event files in RUN/tensorboard; default off
    wandb: str | None = None  # Weights & Biases project to log to; default none
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        # The paths stay str (the command line gives Path): the settings are saved as JSON.
        for name in ("data", "out", "hellaswag"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, str(getattr(self, name)))


# Options that may differ when resuming (they do not change the trajectory, or extend it: --steps).
CHANGEABLE_ON_RESUME = {
    "steps",
    "eval_every",
    "eval_tokens",
    "hellaswag",
    "hellaswag_examples",
    "save_every",
    "device",
    "compile",
    "activation_checkpointing",
    "fsdp",
    "out",
    "tensorboard",
    "wandb",
}
# Options that describe the invocation, not the run.
NOT_SETTINGS = {"data", "model", "out", "resume", "overwrite"}


def run_name(data: str, model: str) -> str:
    """<data>-<preset> from scratch, <data>-<checkpoint>-finetuned from a checkpoint (never the same folder)."""
    stem = Path(data).resolve().stem or "data"
    name = Path(model).stem if Path(model).suffix in (".pt", ".pth") else Path(model).name  # nanoGPT's ckpt.pt: ckpt
    return f"{stem}-{name}-finetuned" if model not in PRESETS else f"{stem}-{model}"


def default_out(cfg: TrainConfig) -> Path:
    return Path("checkpoints") / run_name(cfg.data, cfg.model or "gpt2")


def check(cfg: TrainConfig):
    """The checks that need neither torch, the device nor the model: the options' values (check_values), the files
    they name (DATA, a checkpoint to fine-tune), the run folder (one to resume; not in use: runfolder.lock_run_folder
    takes its lock later, this only refuses early)."""
    check_values(cfg)
    check_text(cfg.data)
    if cfg.model is not None and cfg.model not in PRESETS:
        if not Path(cfg.model).exists():
            raise GptkitError(
                f"unknown model '{cfg.model}': use a preset ({', '.join(PRESETS)}) or a checkpoint directory"
            )
        resolve_checkpoint(cfg.model)
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


def check_values(cfg: TrainConfig):
    """Ranges, choices, options that contradict each other. Options left None (their defaults) pass; resolve() runs
    this again once every default is filled in."""
    c = cfg

    def given(*values) -> bool:
        return all(v is not None for v in values)

    fail_if(c.resume and c.overwrite, "--resume and --overwrite contradict each other: give one")
    fail_if(given(c.steps) and c.steps < 1, f"--steps must be at least 1, not {c.steps}")
    fail_if(given(c.batch_size) and c.batch_size < 1, f"--batch-size must be at least 1, not {c.batch_size}")
    fail_if(given(c.block_size) and c.block_size < 1, f"--block-size must be at least 1, not {c.block_size}")
    fail_if(given(c.grad_accum) and c.grad_accum < 1, f"--grad-accum must be at least 1, not {c.grad_accum}")
    fail_if(
        given(c.tokens_per_step) and c.tokens_per_step < 1,
        f"--tokens-per-step must be at least 1, not {c.tokens_per_step}",
    )
    for name in SHAPE:
        value = getattr(c, name)
        fail_if(given(value) and value < 1, f"--{name.replace('_', '-')} must be at least 1, not {value}")
    fail_if(
        given(c.n_embd, c.n_head) and c.n_head >= 1 and c.n_embd % c.n_head != 0,
        f"--n-embd {c.n_embd} must be divisible by --n-head {c.n_head} (each head gets n_embd / n_head dims)",
    )
    fail_if(given(c.dropout) and not 0 <= c.dropout < 1, f"--dropout must be in [0, 1), not {c.dropout}")
    fail_if(
        given(c.optimizer) and c.optimizer not in OPTIMIZERS,
        f"--optimizer {c.optimizer} is not one gptkit has: use {' or '.join(OPTIMIZERS)}",
    )
    fail_if(
        given(c.adam_lr) and c.optimizer != "muon",
        "--adam-lr sets AdamW's rate beside Muon (with --optimizer muon); for AdamW alone use --lr",
    )
    fail_if(given(c.adam_lr) and c.adam_lr <= 0, f"--adam-lr must be positive, not {c.adam_lr}")
    fail_if(given(c.lr) and c.lr <= 0, f"--lr must be positive, not {c.lr}")
    fail_if(given(c.min_lr) and c.min_lr < 0, f"--min-lr must not be negative, not {c.min_lr}")
    fail_if(given(c.min_lr, c.lr) and c.min_lr > c.lr, f"--min-lr {c.min_lr} must not exceed --lr {c.lr}")
    fail_if(given(c.warmup_steps) and c.warmup_steps < 0, f"--warmup-steps must not be negative, not {c.warmup_steps}")
    fail_if(
        given(c.warmup_steps, c.steps) and c.warmup_steps > c.steps,
        f"--warmup-steps {c.warmup_steps} must not exceed --steps {c.steps}",
    )
    fail_if(given(c.weight_decay) and c.weight_decay < 0, f"--weight-decay must not be negative, not {c.weight_decay}")
    fail_if(given(c.eval_every) and c.eval_every < 0, f"--eval-every must not be negative, not {c.eval_every}")
    fail_if(given(c.eval_tokens) and c.eval_tokens < 0, f"--eval-tokens must not be negative, not {c.eval_tokens}")
    fail_if(
        given(c.hellaswag_examples) and c.hellaswag_examples < 1,
        f"--hellaswag-examples must be at least 1, not {c.hellaswag_examples}",
    )
    fail_if(given(c.save_every) and c.save_every < 0, f"--save-every must not be negative, not {c.save_every}")
    fail_if(
        given(c.val_fraction) and not 0 <= c.val_fraction < 1, f"--val-fraction must be in [0, 1), not {c.val_fraction}"
    )
    if c.dtype is not None:
        check_dtype(c.dtype)
        fail_if(
            DTYPE_NAMES.get(c.dtype) == "float16",
            "training in float16 needs loss scaling, which gptkit does not do: use bfloat16 or float32",
        )
    if c.device is not None:
        check_device(c.device)
    fail_if(c.wandb is not None and not c.wandb.strip(), "--wandb needs a project name: --wandb PROJECT")
    fail_if(given(c.lora_rank) and c.lora_rank < 1, f"--lora-rank must be at least 1, not {c.lora_rank}")
    fail_if(given(c.lora_alpha) and c.lora_alpha <= 0, f"--lora-alpha must be positive, not {c.lora_alpha}")
    fail_if(
        given(c.lora_dropout) and not 0 <= c.lora_dropout < 1, f"--lora-dropout must be in [0, 1), not {c.lora_dropout}"
    )
    if given(c.lora_targets):
        unknown = [t for t in c.lora_targets.split(",") if t.strip() not in LORA_TARGETS]
        fail_if(bool(unknown), f"--lora-targets: no layers named '{','.join(unknown)}': use {', '.join(LORA_TARGETS)}")
    fail_if(
        bool(c.fsdp) and given(c.lora_rank),
        "--fsdp and --lora-rank: LoRA's frozen base is not sharded yet; train the adapters without --fsdp (torchrun "
        "alone copies the model to every process)",
    )
    fail_if(
        not given(c.lora_rank) and any(given(v) for v in (c.lora_alpha, c.lora_dropout, c.lora_targets)),
        "--lora-alpha, --lora-dropout and --lora-targets shape LoRA adapters: add --lora-rank",
    )


def default_lr(optimizer: str, fine_tuning: bool) -> float:
    """The default of --lr: AdamW's (nanoGPT's 6e-4, 3e-5 fine-tuning), or Muon's (Keller Jordan's 0.02; see
    bench/quality_bench.py)."""
    if optimizer == "muon":
        return MUON_FINE_TUNING_LR if fine_tuning else MUON_LR
    return ADAMW_FINE_TUNING_LR if fine_tuning else ADAMW_LR


def resolve_model(c: TrainConfig, base: GPTConfig, fine_tuning: bool, on_cpu: bool):
    """The model's shape, dropout and training window: base's (a preset's or checkpoint's) unless given. A
    checkpoint's shape is fixed; it trains on windows of block_size and keeps its whole context."""
    for name in SHAPE:
        given, own = getattr(c, name), getattr(base, name)
        if fine_tuning and given is not None and given != own:
            option = "--" + name.replace("_", "-")
            raise GptkitError(
                f"{option} {given} differs from the checkpoint's {own}: a checkpoint's shape is fixed, so {option} "
                "applies to training a preset from scratch; leave it out"
            )
        setattr(c, name, own if given is None else given)
    c.dropout = (base.dropout if fine_tuning else 0.0) if c.dropout is None else c.dropout
    context = base.block_size
    c.block_size = c.block_size or (min(256, context) if on_cpu else context)
    if fine_tuning and c.block_size > context:
        raise GptkitError(f"--block-size {c.block_size} is longer than the model's context of {context} tokens")


def resolve(cfg: TrainConfig, device: torch.device, base: GPTConfig, fine_tuning: bool, world_size: int) -> TrainConfig:
    """cfg with every default filled in and checked, the checks that need the device and the model included.
    base: the config of the preset or checkpoint trained (of the run's own checkpoint when resuming)."""
    from gptkit.machine.runtime import pick_dtype

    on_cpu = device.type == "cpu"
    c = replace(cfg)
    c.model = c.model or "gpt2"
    c.steps = 1000 if c.steps is None else c.steps
    c.batch_size = c.batch_size or (4 if on_cpu else 16)
    resolve_model(c, base, fine_tuning, on_cpu)
    micro_tokens = c.batch_size * c.block_size * world_size
    if c.tokens_per_step is not None:
        if c.grad_accum is not None and c.grad_accum * micro_tokens != c.tokens_per_step:
            raise GptkitError("--grad-accum and --tokens-per-step disagree: give one of them")
        if c.tokens_per_step < micro_tokens or c.tokens_per_step % micro_tokens:
            raise GptkitError(
                f"--tokens-per-step {c.tokens_per_step} must be a multiple of batch x block x processes = {micro_tokens}"
            )
        c.grad_accum = c.tokens_per_step // micro_tokens
    c.grad_accum = c.grad_accum or 1
    c.tokens_per_step = c.grad_accum * micro_tokens
    c.optimizer = c.optimizer or "adamw"
    c.lr = c.lr if c.lr is not None else default_lr(c.optimizer, fine_tuning)
    if c.optimizer == "muon":
        c.adam_lr = c.adam_lr if c.adam_lr is not None else default_lr("adamw", fine_tuning)
    c.min_lr = c.min_lr if c.min_lr is not None else c.lr / 10
    c.warmup_steps = c.warmup_steps if c.warmup_steps is not None else c.steps // 20
    c.weight_decay = 0.1 if c.weight_decay is None else c.weight_decay
    c.eval_every = 250 if c.eval_every is None else c.eval_every
    c.eval_tokens = c.eval_tokens if c.eval_tokens is not None else 20 * micro_tokens
    c.hellaswag_examples = 500 if c.hellaswag_examples is None else c.hellaswag_examples
    c.save_every = 500 if c.save_every is None else c.save_every
    c.val_fraction = 0.1 if c.val_fraction is None else c.val_fraction
    c.dtype = str(pick_dtype(c.dtype or "auto", device)).removeprefix("torch.")
    c.compile = bool(c.compile)
    c.activation_checkpointing = bool(c.activation_checkpointing)
    c.fsdp = bool(c.fsdp) and world_size > 1  # an --fsdp run resumed in one process holds the whole model
    if c.lora_rank is not None:
        c.lora_alpha = 2.0 * c.lora_rank if c.lora_alpha is None else float(c.lora_alpha)
        c.lora_dropout = 0.0 if c.lora_dropout is None else c.lora_dropout
        c.lora_targets = ",".join(t.strip() for t in (c.lora_targets or "attn").split(","))
    c.seed = 1337 if c.seed is None else c.seed
    c.tensorboard = bool(c.tensorboard)
    c.device = str(device)
    check_values(c)  # the values that came from defaults (or the resumed run), against the ones given
    return c


def lora_of(cfg: TrainConfig) -> LoraSettings | None:
    """The LoRA adapters a resolved cfg trains, if any."""
    if cfg.lora_rank is None:
        return None
    return LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets.split(",")))


def settings_of(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}


def merge_for_resume(cfg: TrainConfig, saved: dict, saved_model: str) -> TrainConfig:
    """The saved run's settings, with the options that may change on resume taken from cfg; any other option
    given with a different value is an error (it would not be the same run)."""
    if cfg.model is not None and cfg.model != saved_model and str(Path(cfg.model).resolve()) != saved_model:
        raise GptkitError(f"--model {cfg.model} differs from the run being resumed ({saved_model}): leave it out")
    merged = {"data": cfg.data, "model": saved_model, "out": cfg.out, "resume": True}
    for f in fields(TrainConfig):
        if f.name not in saved:  # an option newer than the run
            if f.name in CHANGEABLE_ON_RESUME:
                merged[f.name] = getattr(cfg, f.name)
            continue
        given, before = getattr(cfg, f.name), saved[f.name]
        if given is None or (f.name == "dtype" and given == "auto"):
            merged[f.name] = before
        elif (
            f.name in CHANGEABLE_ON_RESUME
            or given == before
            or isinstance(given, float)
            and math.isclose(given, before)
        ):
            merged[f.name] = given
        else:
            option = "--" + f.name.replace("_", "-")
            raise GptkitError(f"{option} {given} differs from the run being resumed ({before}): leave it out")
    merged["device"] = cfg.device  # the device is this machine's choice, not the run's
    if cfg.grad_accum is None:  # from the tokens per step, for the processes this session has (maybe not the run's)
        merged["grad_accum"] = None
    return TrainConfig(**merged)
