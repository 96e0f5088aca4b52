"""The optimizer and its schedule: built in one place (AdamW, or Muon with AdamW beside it), their state saved to and
restored from named tensors in one place (so a run folder holds no pickle).

Muon (Keller Jordan, 2024; torch.optim.Muon) updates a weight matrix by its momentum orthogonalized with a few
Newton-Schulz iterations. It is for the matrices inside the transformer blocks only: the embeddings (and the output
head tied to wte), biases and layer norms stay with AdamW, as in the modded-nanogpt speedrun, in two groups with their
own peak rates: the embeddings (--embedding-lr; wte is the output head too, one tensor, so the head has no group of
its own) and the scalars (--scalar-lr: biases, layer norms).

The schedule is a function of the step alone (learning_rate, muon_momentum), applied before each step
(apply_schedule): a resumed run computes the same values, so nothing of it is saved.
"""

import math
from functools import partial

import torch

from gptkit.machine.cpu import cpu_prefers_bf16
from gptkit.model.gpt import GPT

ADAMW_BETAS = (0.9, 0.95)
MUON_MOMENTUM = 0.95
MUON_FIRST_MOMENTUM = 0.85  # where --muon-momentum-warmup starts (modded-nanogpt, nanochat)


class Optimizers:
    """Torch optimizers over disjoint parameters, stepped as one: AdamW alone, or Muon and AdamW. Each parameter
    group carries its peak learning rate ("peak_lr"), which the schedule scales (apply_schedule)."""

    def __init__(self, *parts: torch.optim.Optimizer):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    def step(self):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True):
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)


class Muon(torch.optim.Muon):
    """torch.optim.Muon (Keller Jordan's update and learning-rate scaling, decoupled weight decay), with its
    Newton-Schulz iteration in fp32 on CPUs where bf16 is not the faster (cpu.cpu_prefers_bf16): there torch's
    bf16 iteration runs emulated, slower than the forward and backward of the model's blocks. Under --fsdp each
    process holds some rows of a matrix, and the iteration needs all of them: every process gathers the whole
    update, orthogonalizes it and keeps its own rows."""

    def __init__(self, params, device: torch.device, sharded: bool = False, **options):
        super().__init__(params, **options)
        self.fp32_iteration = device.type == "cpu" and not cpu_prefers_bf16()
        self.sharded = sharded

    @torch.no_grad()
    def step(self):
        if not self.fp32_iteration and not self.sharded:
            return super().step()
        dtype = torch.float32 if self.fp32_iteration else torch.bfloat16
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            orthogonal = partial(
                orthogonalize, coefficients=group["ns_coefficients"], steps=group["ns_steps"], eps=group["eps"]
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                if self.sharded:  # this process's rows of the whole update (only --fsdp runs import DTensor's module)
                    from torch.distributed.tensor import distribute_tensor

                    whole = orthogonal(update.full_tensor(), dtype=dtype).to(p.dtype)
                    update = distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None)
                else:
                    update = orthogonal(update, dtype=dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))


def orthogonalize(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype=torch.float32
) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix, in dtype."""
    a, b, c = coefficients
    x = g.to(dtype)
    x = x.T if g.size(0) > g.size(1) else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


def is_block_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """The weight matrices inside the transformer blocks (attention and MLP), which Muon optimizes."""
    return p.dim() == 2 and name.startswith("transformer.h.")


def make_adamw(groups: list[tuple[list, float]], weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over (parameters, peak lr) groups, as GPT-2 / nanoGPT: weight decay on matrices (matmul weights,
    embeddings), none on biases and norms."""
    param_groups = [
        {"params": params, "weight_decay": weight_decay if params[0].dim() >= 2 else 0.0, "peak_lr": lr, "lr": lr}
        for params, lr in groups
        if params
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, betas=ADAMW_BETAS, eps=1e-8, fused=fused, foreach=None if fused else True)


def parameter_groups(model: GPT) -> dict[str, list[torch.nn.Parameter]]:
    """The trained parameters by group: "matrices" (the blocks' weight matrices), "embeddings" (wte = the tied output
    head, wpe), "scalars" (biases, layer norms)."""
    groups = {"matrices": [], "embeddings": [], "scalars": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "matrices" if is_block_matrix(name, p) else "embeddings" if p.dim() >= 2 else "scalars"
            groups[kind].append(p)
    return groups


def make_optimizer(model: GPT, cfg, device: torch.device) -> Optimizers:
    """AdamW over every parameter at cfg.lr (matrices and embeddings decayed); or, with cfg.optimizer "muon", Muon over
    the blocks' weight matrices at cfg.lr and AdamW over the embeddings at cfg.embedding_lr and the scalars at
    cfg.scalar_lr."""
    groups = parameter_groups(model)
    if cfg.optimizer != "muon":
        decayed = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]  # in the model's order
        return Optimizers(make_adamw([(decayed, cfg.lr), (groups["scalars"], cfg.lr)], cfg.weight_decay, device))
    muon = Muon(
        [{"params": groups["matrices"], "peak_lr": cfg.lr}],
        device,
        sharded=cfg.fsdp,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=MUON_MOMENTUM,
        nesterov=True,
    )
    rest = [(groups["embeddings"], cfg.embedding_lr), (groups["scalars"], cfg.scalar_lr)]
    return Optimizers(muon, make_adamw(rest, cfg.weight_decay, device))


def learning_rate(step: int, cfg) -> float:
    """The main group's learning rate at step (counted from 0): linear warmup over warmup_steps to lr, then
    cfg.schedule down to min_lr at `steps`: cosine; linear; or wsd, constant until the last cooldown_fraction of the
    steps, then linear."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.steps:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, cfg.steps - round(cfg.cooldown_fraction * cfg.steps))
    else:
        decay_start = cfg.warmup_steps
    progress = max(0, step - decay_start) / max(1, cfg.steps - decay_start)
    left = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr + left * (cfg.lr - cfg.min_lr)


def muon_momentum(step: int, cfg) -> float:
    """Muon's momentum at step: linear from MUON_FIRST_MOMENTUM to MUON_MOMENTUM over muon_momentum_warmup steps."""
    if not cfg.muon_momentum_warmup or step >= cfg.muon_momentum_warmup:
        return MUON_MOMENTUM
    return MUON_FIRST_MOMENTUM + (MUON_MOMENTUM - MUON_FIRST_MOMENTUM) * step / cfg.muon_momentum_warmup


def apply_schedule(optimizer: Optimizers, step: int, cfg) -> float:
    """Put every parameter group where the schedule has it at step: each group's peak rate scaled as the main one
    (learning_rate), Muon's momentum (muon_momentum). Returns the main learning rate."""
    lr = learning_rate(step, cfg)
    for part in optimizer.parts:
        for group in part.param_groups:
            group["lr"] = group["peak_lr"] * lr / cfg.lr
            if isinstance(part, torch.optim.Muon):
                group["momentum"] = muon_momentum(step, cfg)
    return lr


def parameter_names(model: GPT, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of a torch optimizer's parameters, in the order its state_dict numbers them."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_tensors(model: GPT, optimizer: Optimizers) -> dict[str, torch.Tensor]:
    """The state of every part as flat named tensors: optimizer.<parameter name>.<state> (AdamW's exp_avg,
    exp_avg_sq and step; Muon's momentum_buffer). A parameter belongs to one part, so the names never clash."""
    tensors = {}
    for part in optimizer.parts:
        names = parameter_names(model, part)
        for index, moments in part.state_dict()["state"].items():
            for key, value in moments.items():
                tensors[f"optimizer.{names[index]}.{key}"] = value.reshape(-1) if key == "step" else value
    return tensors


def state_owner(key: str) -> str:
    """The parameter name in an optimizer_tensors key (optimizer.<parameter name>.<state>)."""
    return key.removeprefix("optimizer.").rsplit(".", 1)[0]


def restore_optimizer(optimizer: Optimizers, model: GPT, tensors: dict[str, torch.Tensor]):
    """Load the state that optimizer_tensors saved."""
    for part in optimizer.parts:
        names = parameter_names(model, part)
        saved = part.state_dict()
        for index, name in enumerate(names):
            prefix = f"optimizer.{name}."
            moments = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if "step" in moments:
                moments["step"] = moments["step"].reshape(())
            if moments:
                saved["state"][index] = moments
        part.load_state_dict(saved)
