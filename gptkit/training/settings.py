"""A run's settings: a TrainConfig with every default filled in and checked (with_defaults: an option's fallback, or a
value worked out from the model, the machine and the other options), and a resumed run's (merge_for_resume: the
saved settings, with the options that may change). Importing this module does not import torch."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.errors import GptkitError
from gptkit.model.config import GPTConfig
from gptkit.options.declare import fallbacks, flag_of
from gptkit.training.config import CHANGEABLE_ON_RESUME, LORA_SHAPE, NOT_SETTINGS, TrainConfig

if TYPE_CHECKING:
    import torch

ADAMW_LR, ADAMW_FINE_TUNING_LR = 6e-4, 3e-5
MUON_LR, MUON_FINE_TUNING_LR = 0.02, 1e-3
# The schedules bench/recipe_sweep.py measured best. From scratch Muon (the default), with AdamW's groups beside it:
# momentum warmed up, no warmup of the rates, linear decay to zero. AdamW from scratch (nanoGPT's) and every
# fine-tuning: a warmup of steps / 20, cosine to a tenth, no momentum warmup.
MUON_FROM_SCRATCH = {"schedule": "linear", "min_lr_fraction": 0.0, "muon_momentum_warmup": 300, "warmup_steps": 0}
NANOGPT = {"schedule": "cosine", "min_lr_fraction": 0.1, "muon_momentum_warmup": 0}
EMBEDDING_LR = SCALAR_LR = 0.008  # AdamW's beside Muon, from scratch
# What a run saved before an option existed trained with (resuming it goes on exactly so).
BEFORE_OPTION = {"schedule": "cosine", "muon_momentum_warmup": 0}
SHAPE = ("n_layer", "n_head", "n_embd")  # the options that set a model's shape from scratch (with block_size)


def default_lr(optimizer: str, fine_tuning: bool) -> float:
    """The default of --lr: AdamW's (nanoGPT's 6e-4, 3e-5 fine-tuning), or Muon's (Keller Jordan's 0.02; see
    bench/quality_bench.py)."""
    if optimizer == "muon":
        return MUON_FINE_TUNING_LR if fine_tuning else MUON_LR
    return ADAMW_FINE_TUNING_LR if fine_tuning else ADAMW_LR


def recipe(v: dict, fine_tuning: bool) -> dict:
    """The optimizer and schedule settings of v (a TrainConfig's values) with their defaults filled in: the recipe
    from scratch or fine-tuning's. Each group's minimum is min_lr_fraction of its peak (min_lr: the main group's)."""
    v = dict(v)
    if v["optimizer"] is None:
        v["optimizer"] = "adamw" if fine_tuning else "muon"
    for name, value in (NANOGPT if fine_tuning or v["optimizer"] == "adamw" else MUON_FROM_SCRATCH).items():
        if v[name] is None and not (name == "min_lr_fraction" and v["min_lr"] is not None):
            v[name] = value
    if v["lr"] is None:
        v["lr"] = default_lr(v["optimizer"], fine_tuning)
    if v["optimizer"] == "muon":
        for name, scratch_lr in (("embedding_lr", EMBEDDING_LR), ("scalar_lr", SCALAR_LR)):
            if v[name] is None:
                v[name] = ADAMW_FINE_TUNING_LR if fine_tuning else scratch_lr
    else:
        v["muon_momentum_warmup"] = None
    if v["min_lr_fraction"] is None:
        v["min_lr_fraction"] = v["min_lr"] / v["lr"]
    if v["min_lr"] is None:
        v["min_lr"] = v["lr"] * v["min_lr_fraction"]
    if v["schedule"] != "wsd":
        v["cooldown_fraction"] = None
    if v["warmup_steps"] is None:
        v["warmup_steps"] = v["steps"] // 20
    return v


def model_shape(cfg: TrainConfig, base: GPTConfig, fine_tuning: bool, on_cpu: bool) -> dict:
    """The model's shape, dropout and training window: base's (a preset's or checkpoint's) unless given. A
    checkpoint's shape is fixed; it trains on windows of block_size and keeps its whole context."""
    shape = {}
    for name in SHAPE:
        given, own = getattr(cfg, name), getattr(base, name)
        if fine_tuning and given is not None and given != own:
            flag = flag_of(TrainConfig, name)
            raise GptkitError(
                f"{flag} {given} differs from the checkpoint's {own}: a checkpoint's shape is fixed, so {flag} "
                "applies to training a preset from scratch; leave it out"
            )
        shape[name] = own if given is None else given
    shape["dropout"] = (base.dropout if fine_tuning else 0.0) if cfg.dropout is None else cfg.dropout
    context = base.block_size
    shape["block_size"] = cfg.block_size or (min(256, context) if on_cpu else context)
    if fine_tuning and shape["block_size"] > context:
        raise GptkitError(f"--block-size {shape['block_size']} is longer than the model's context of {context} tokens")
    return shape


def grad_accum_for_tokens(cfg: TrainConfig, micro_tokens: int) -> int:
    """The micro-steps per optimizer step that --tokens-per-step asks for (--grad-accum, if given, must agree)."""
    if cfg.grad_accum is not None and cfg.grad_accum * micro_tokens != cfg.tokens_per_step:
        raise GptkitError("--grad-accum and --tokens-per-step disagree: give one of them")
    if cfg.tokens_per_step < micro_tokens or cfg.tokens_per_step % micro_tokens:
        raise GptkitError(
            f"--tokens-per-step {cfg.tokens_per_step} must be a multiple of batch x block x processes = {micro_tokens}"
        )
    return cfg.tokens_per_step // micro_tokens


def with_defaults(
    cfg: TrainConfig, device: torch.device, base: GPTConfig, fine_tuning: bool, world_size: int
) -> TrainConfig:
    """cfg with every default filled in and checked, the checks that need the device and the model included.
    base: the config of the preset or checkpoint trained (of the run's own checkpoint when resuming)."""
    from gptkit.machine.runtime import pick_dtype

    on_cpu = device.type == "cpu"
    lora = cfg.lora_rank is not None
    v = asdict(cfg)
    for name, value in fallbacks(TrainConfig).items():  # LoRA's only for a run with adapters
        if v[name] is None and (lora or name not in LORA_SHAPE):
            v[name] = value
    v["batch_size"] = cfg.batch_size or (4 if on_cpu else 16)
    v |= model_shape(cfg, base, fine_tuning, on_cpu)
    micro_tokens = v["batch_size"] * v["block_size"] * world_size
    if cfg.tokens_per_step is not None:
        v["grad_accum"] = grad_accum_for_tokens(cfg, micro_tokens)
    v["tokens_per_step"] = v["grad_accum"] * micro_tokens
    v |= recipe(v, fine_tuning)
    if v["eval_tokens"] is None:
        v["eval_tokens"] = 20 * micro_tokens
    v["dtype"] = str(pick_dtype(cfg.dtype or "auto", device)).removeprefix("torch.")
    v["fsdp"] = bool(cfg.fsdp) and world_size > 1  # an --fsdp run resumed in one process holds the whole model
    if lora:
        v["lora_alpha"] = 2.0 * cfg.lora_rank if cfg.lora_alpha is None else float(cfg.lora_alpha)
        v["lora_targets"] = ",".join(t.strip() for t in v["lora_targets"].split(","))
    v["device"] = str(device)
    return TrainConfig(**v)  # checked again: the values that came from defaults (or the run resumed) with the given


def older_run_setting(name: str, saved: dict):
    """The value of the option name for a run saved before the option existed: its behaviour then (None: the
    default). --embedding-lr and --scalar-lr were one --adam-lr; --optimizer was saved already."""
    if name in ("embedding_lr", "scalar_lr"):
        return saved.get("adam_lr")
    if name == "muon_momentum_warmup" and saved.get("optimizer") != "muon":
        return None
    return BEFORE_OPTION.get(name)


def merge_for_resume(cfg: TrainConfig, saved: dict, saved_model: str) -> TrainConfig:
    """The saved run's settings, with the options that may change on resume taken from cfg; any other option
    given with a different value is an error (it would not be the same run)."""
    if cfg.model is not None and cfg.model != saved_model and str(Path(cfg.model).resolve()) != saved_model:
        raise GptkitError(f"--model {cfg.model} differs from the run being resumed ({saved_model}): leave it out")
    merged = {"data": cfg.data, "model": saved_model, "out": cfg.out, "resume": True}
    for f in fields(TrainConfig):
        if f.name not in saved:  # an option newer than the run: what the run trained with before it existed
            if f.name in CHANGEABLE_ON_RESUME:
                merged[f.name] = getattr(cfg, f.name)
            elif f.name not in NOT_SETTINGS:
                merged[f.name] = older_run_setting(f.name, saved)
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
            raise GptkitError(
                f"{flag_of(TrainConfig, f.name)} {given} differs from the run being resumed ({before}): leave it out"
            )
    merged["device"] = cfg.device  # the device is this machine's choice, not the run's
    if cfg.grad_accum is None:  # from the tokens per step, for the processes this session has (maybe not the run's)
        merged["grad_accum"] = None
    return TrainConfig(**merged)
