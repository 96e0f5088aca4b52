"""A run's setup, before its first step: the model (a preset's shape, or a checkpoint cut to the training window, with
LoRA adapters where asked), placed, sharded under --fsdp, compiled, wrapped in DDP under torchrun; the optimizer; the
data stream. New, or restored from a save exactly where it stopped (optimizer state, random number generators, data
position).
"""

from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gptkit.checkpoint.folder import load_checkpoint, read_config, read_metadata
from gptkit.checkpoint.tensors import load_tensors
from gptkit.data.conversations import load_conversations
from gptkit.data.loader import BatchLoader, TokenSource
from gptkit.data.packed import ConversationSource, PackedBatchLoader
from gptkit.errors import GptkitError
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, recorded_template
from gptkit.machine.runtime import keep_freed_memory
from gptkit.model.config import PRESETS, GPTConfig
from gptkit.model.gpt import GPT
from gptkit.model.lora import add_lora
from gptkit.training.config import TrainConfig, lora_of
from gptkit.training.distributed import Processes, restore_rng
from gptkit.training.optim import make_optimizer, restore_optimizer
from gptkit.training.run import Run, fsdp_module
from gptkit.training.runfolder import OPTIMIZER_SHARDS_DIR, STATE_TENSORS
from gptkit.training.step import check_step_fits


def build_model(cfg: TrainConfig) -> tuple[GPT, torch.Tensor | None]:
    """(model in fp32, the position embeddings set aside): a new model of the preset's shape as overridden by cfg,
    or the checkpoint cfg.model, with cfg's dropout."""
    if cfg.model in PRESETS:
        shape = {name: getattr(cfg, name) for name in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
        return GPT(replace(PRESETS[cfg.model], **shape)), None
    model, extra_positions = load_for_training(Path(cfg.model), cfg)
    if lora := lora_of(cfg):
        add_lora(model, lora)
    return model, extra_positions


def load_for_training(path: Path, cfg: TrainConfig) -> tuple[GPT, torch.Tensor | None]:
    """A checkpoint (or a LoRA run's save: the frozen base with its adapters) with cfg's dropout, cut to a context
    of cfg.block_size: training at a shorter window sees only the first block_size position embeddings; the rest are
    returned, to be saved unchanged with the model."""
    model = load_checkpoint(path, dtype=torch.float32, merge_adapters=False)
    model.set_dropout(cfg.dropout)
    if cfg.block_size < model.config.block_size:
        return model, model.crop_block_size(cfg.block_size)
    return model, None


def model_config(name: str) -> GPTConfig:
    """The config of a preset or checkpoint ."""
    return PRESETS[name] if name in PRESETS else read_config(name)


def build_run(
    cfg: TrainConfig, procs: Processes, out: Path, state: dict | None, saved: Path | None, source: TokenSource
) -> Run:
    """The model, optimizer and data stream of the run: new, or restored from the save in the folder saved."""
    loader, val_tokens, chat_template = data_stream(cfg, procs, source, saved)
    torch.manual_seed(cfg.seed)
    keep_freed_memory()
    dtype = getattr(torch, cfg.dtype)
    if state is None:
        model, extra_positions = build_model(cfg)
        model_label = cfg.model if cfg.model in PRESETS else str(Path(cfg.model).resolve())
    else:
        (model, extra_positions), model_label = load_for_training(saved, cfg), state["model"]
    model.to(procs.device).train()
    model.activation_checkpointing = cfg.activation_checkpointing
    if cfg.fsdp:
        fsdp_module().shard_model(model, dtype)
    check_step_fits(model, cfg, dtype, procs)
    r = Run(
        cfg=cfg,
        out=out,
        model=model,
        model_label=model_label,
        step_model=model,
        optimizer=make_optimizer(model, cfg, procs.device),
        loader=loader,
        val_tokens=val_tokens,
        data_info=data_info(cfg, source),
        dtype=dtype,
        extra_positions=extra_positions,
        chat_template=chat_template,
        source=source,
    )
    if state is not None:
        restore(r, state, saved, procs)
    elif procs.distributed:
        torch.manual_seed(cfg.seed + procs.rank)  # different dropout masks per process (the weights are broadcast)
    if cfg.compile:
        r.step_model = torch.compile(r.step_model)
    if procs.distributed and not cfg.fsdp:
        r.step_model = DDP(r.step_model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    return r


def data_stream(cfg: TrainConfig, procs: Processes, source, saved: Path | None):
    """(the training batches, the validation data, the chat template) of DATA: a text's token windows, or its
    conversations written with the run's template (the save's when resuming, the checkpoint's when fine-tuning one
    that records one, else the default) and packed into rows of the block size."""
    if not isinstance(source, ConversationSource):
        train_tokens, val_tokens = source.split(cfg.val_fraction)
        loader = BatchLoader(train_tokens, cfg.batch_size, cfg.block_size, cfg.seed, procs.rank, procs.world_size)
        return loader, val_tokens, None
    recorded_in = saved if saved is not None else cfg.model if Path(cfg.model).is_dir() else None
    template = DEFAULT_TEMPLATE if recorded_in is None else recorded_template(read_metadata(recorded_in), recorded_in)
    packed = load_conversations(source.path, cfg.block_size, cfg.val_fraction, template, cfg.train_on_prompt)
    source.packed, source.tokens = packed, int(packed.train.tokens.size + packed.val.tokens.size)
    loader = PackedBatchLoader(packed.train, cfg.batch_size, cfg.seed, procs.rank, procs.world_size)
    return loader, packed.val, template


def data_info(cfg: TrainConfig, source: TokenSource) -> dict:
    """The training data as a save records it (and eval rebuilds the validation split from)."""
    return {
        "path": str(Path(cfg.data).resolve()),
        "format": source.format,
        "sha256": source.digest,
        "tokens": source.tokens,
        "val_fraction": cfg.val_fraction if source.split_kind in ("tail", "conversations") else None,
        "split": source.split_kind,
    }


def restore(r: Run, state: dict, saved: Path, procs: Processes):
    """Put the run where the save in the folder saved left it: the optimizer state, the random number generators,
    the data stream's position, the counts."""
    cfg, model = r.cfg, r.model
    # under --fsdp a whole optimizer state (from a save without it) is read to the CPU and sharded from there
    tensors = load_tensors(saved / STATE_TENSORS, "cpu" if cfg.fsdp else procs.device)
    if state["settings"].get("fsdp") and state["world_size"] > 1 or (saved / OPTIMIZER_SHARDS_DIR).is_dir():
        tensors |= read_optimizer_shards(saved, model)
    elif cfg.fsdp:
        tensors = fsdp_module().placed_like_parameters(tensors, model)
    restore_optimizer(r.optimizer, model, tensors)
    restore_rng({k: v for k, v in tensors.items() if k.startswith("rng.")}, procs, cfg.seed)
    r.loader.load_state(state["loader"])
    r.step, r.tokens_seen, r.wall_before = state["step"], state["tokens_seen"], state["wall_time_s"]
    r.tokens_trained = state.get("tokens_trained", 0)
    r.val_loss, r.hellaswag_acc_norm = state.get("val_loss"), state.get("hellaswag_acc_norm")
    r.best_val = state.get("best_val")


def read_optimizer_shards(saved: Path, model: GPT) -> dict[str, torch.Tensor]:
    """The optimizer state an --fsdp run saved in shards, as this process holds it (fsdp.load_optimizer_shards)."""
    fsdp = fsdp_module()
    try:
        if not (saved / OPTIMIZER_SHARDS_DIR).is_dir():
            raise fsdp.ShardsFailed(f"{saved} lacks {OPTIMIZER_SHARDS_DIR}")
        return fsdp.load_optimizer_shards(saved / OPTIMIZER_SHARDS_DIR, model)
    except fsdp.ShardsFailed as e:
        raise GptkitError(
            f"the optimizer state of {saved} is damaged ({e}): the run cannot be resumed exactly; train on from its "
            "checkpoint as a new run (--model RUN --out ANOTHER_FOLDER)"
        ) from None
