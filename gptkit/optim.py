"""The optimizer and its schedule: built in one place, its state saved to and restored from named tensors in one
place (so a run folder holds no pickle)."""

import math

import torch

from gptkit.model import GPT


def make_optimizer(model: GPT, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW as GPT-2 / nanoGPT: weight decay on matrices (matmul weights, embeddings), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused, foreach=None if fused else True
    )


def learning_rate(step: int, cfg) -> float:
    """Linear warmup over warmup_steps to lr, then cosine decay to min_lr at `steps` (step counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def set_learning_rate(optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr


def parameter_names(model: GPT, optimizer) -> list[str]:
    """The names of the optimizer's parameters, in the order its state_dict numbers them."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_tensors(model: GPT, optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's state as flat named tensors: optimizer.<parameter name>.<moment>."""
    names = parameter_names(model, optimizer)
    tensors = {}
    for index, moments in optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            tensors[f"optimizer.{names[index]}.{key}"] = value.reshape(-1) if key == "step" else value
    return tensors


def restore_optimizer(optimizer, model: GPT, tensors: dict[str, torch.Tensor]):
    """Load the state that optimizer_tensors saved."""
    names = parameter_names(model, optimizer)
    saved = optimizer.state_dict()
    for index, name in enumerate(names):
        prefix = f"optimizer.{name}."
        moments = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if moments:
            moments["step"] = moments["step"].reshape(())
            saved["state"][index] = moments
    optimizer.load_state_dict(saved)
