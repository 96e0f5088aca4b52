"""A run being trained (Run): what the loop works with, how far it has come, and its saves: rank 0 writes the model
(a checkpoint, or a LoRA run's adapters) and the training state into a save folder (runfolder.save_run); under --fsdp
every process first writes its shards of the optimizer state.
"""

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gptkit.checkpoint.folder import save_adapters, save_checkpoint
from gptkit.data.conversations import PackedRows
from gptkit.data.loader import BatchLoader
from gptkit.data.packed import PackedBatchLoader
from gptkit.errors import GptkitError
from gptkit.files import remove
from gptkit.model.gpt import GPT
from gptkit.training.config import TrainConfig, lora_of, settings_of
from gptkit.training.distributed import Processes, rng_states
from gptkit.training.optim import Optimizers, optimizer_tensors
from gptkit.training.runfolder import OPTIMIZER_SHARDS_DIR, save_run, staging_folder


def fsdp_module():
    """gptkit.training.fsdp, imported by the runs that use --fsdp only: torch's distributed tensors and checkpoints
    are slow to import."""
    from gptkit.training import fsdp

    return fsdp


@dataclass
class Run:
    """A run being trained: what the loop works with, and how far it has come."""

    cfg: TrainConfig
    out: Path
    model: GPT
    model_label: str
    step_model: torch.nn.Module  # the model as the step calls it: compiled and / or wrapped in DDP
    optimizer: Optimizers
    loader: BatchLoader | PackedBatchLoader
    val_tokens: list[np.ndarray] | PackedRows  # the validation shards, or rows of conversations
    data_info: dict
    dtype: torch.dtype
    extra_positions: torch.Tensor | None = None  # a checkpoint's position embeddings past the training window
    hellaswag: list[dict] | None = None  # the HellaSwag examples scored at each evaluation
    step: int = 0
    tokens_seen: int = 0
    tokens_trained: int = 0  # the targets the loss counted: all of a text's, a conversation's replies
    chat_template: dict | None = None  # the template conversations were written with (None: text data)
    source: object = None  # DATA as train opened it (a TokenSource or a ConversationSource)
    wall_before: float = 0.0  # seconds spent in earlier sessions of a resumed run
    loss: float | None = None
    val_loss: float | None = None
    hellaswag_acc_norm: float | None = None
    best_val: dict | None = None  # the lowest validation loss so far and its step
    target_reached: dict | None = None  # the step, tokens and wall time at which val <= --target-loss
    started: float = field(default_factory=time.perf_counter)
    session_time: float = 0.0  # seconds in training steps in this process's session
    session_tokens: int = 0

    def metadata(self, procs: Processes) -> dict:
        return {
            "model": self.model_label,
            "step": self.step,
            "steps": self.cfg.steps,
            "tokens_seen": self.tokens_seen,
            **({"tokens_trained": self.tokens_trained} if self.chat_template is not None else {}),
            **({"chat_template": self.chat_template} if self.chat_template is not None else {}),
            "train_loss": self.loss,
            "val_loss": self.val_loss,
            **({"hellaswag_acc_norm": self.hellaswag_acc_norm} if self.hellaswag_acc_norm is not None else {}),
            **({"best_val": self.best_val} if self.best_val is not None else {}),
            **({"target_reached": self.target_reached} if self.target_reached is not None else {}),
            "data": self.data_info,
            "settings": settings_of(self.cfg) | {"world_size": procs.world_size},
            "wall_time_s": round(self.wall_before + time.perf_counter() - self.started, 3),
        }

    def save(self, procs: Processes):
        meta = self.metadata(procs)
        state = meta | {
            "settings": settings_of(self.cfg),
            "loader": self.loader.state(),
            "world_size": procs.world_size,
        }
        tensors = rng_states(procs) | optimizer_tensors(self.model, self.optimizer)
        # under --fsdp the optimizer's shards first: written and freed before the whole model is gathered on rank 0
        folders = self.save_optimizer_shards(tensors, procs) if self.cfg.fsdp else {}
        if lora := lora_of(self.cfg):  # the adapters alone, named after their base
            written = [p for p in self.model.parameters() if p.requires_grad]
            write_model = partial(save_adapters, self.model, settings=lora, base=self.model_label, metadata=meta)
        else:
            written = [*self.model.parameters(), *([] if self.extra_positions is None else [self.extra_positions])]
            model_state = fsdp_module().full_model_state(self.model) if self.cfg.fsdp else None  # all send their shards
            write_model = partial(
                save_checkpoint, self.model, metadata=meta, extra_positions=self.extra_positions, state=model_state
            )
        failure = None
        if procs.main:  # rank 0 writes; the others wait for it and stop with its message if it failed
            try:
                model_bytes = sum(t.numel() * t.element_size() for t in written)
                save_run(self.out, write_model, model_bytes, tensors, state, folders)
            except GptkitError as e:
                failure = str(e)
                for folder in folders.values():  # what the processes wrote for a save that failed
                    remove(folder)
        if failure := procs.from_main(failure):
            raise GptkitError(failure)

    def save_optimizer_shards(self, tensors: dict[str, torch.Tensor], procs: Processes) -> dict[str, Path]:
        """Under --fsdp: every process writes its shards of the optimizer state (taken out of tensors) into a
        temporary folder, which save_run moves into the save."""
        fsdp = fsdp_module()
        shards = {name: tensors.pop(name) for name in [n for n, t in tensors.items() if fsdp.is_shard(t)]}
        folder = staging_folder(self.out, self.step, OPTIMIZER_SHARDS_DIR)
        try:
            fsdp.save_optimizer_shards(shards, folder)
        except fsdp.ShardsFailed as e:  # in every process, once every process has stopped writing
            if procs.main:
                remove(folder)
            raise GptkitError(f"could not save step {self.step} to {self.out}: {e}") from None
        return {OPTIMIZER_SHARDS_DIR: folder}
