"""What `gptkit train` was asked for (TrainConfig: each option declared once, its value checks run when it is made)
and what a run saves of it (settings_of); training.settings fills in its defaults and holds the rules for resuming,
training.runcheck checks the files and run folder it names. Importing this module does not import torch."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from gptkit.model.config import LORA_TARGETS, LoraSettings
from gptkit.options.declare import (
    DATA,
    EVALUATION_AND_SAVING,
    HARDWARE,
    LOGGING,
    LORA,
    MODEL,
    OPTIMIZATION,
    SCHEDULE,
    argument,
    check_declared,
    declared,
    fail_if,
    flag_of,
    option,
    tagged,
)
from gptkit.options.shared import (
    DTYPE_NAMES,
    check_device,
    check_dtype,
)

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("wsd", "cosine", "linear")
MUON_ONLY = ("embedding_lr", "scalar_lr", "muon_momentum_warmup")  # refused with AdamW alone
LORA_SHAPE = ("lora_alpha", "lora_dropout", "lora_targets")  # the options that shape LoRA adapters (with lora_rank)
# The tags of train's options: which may differ when resuming (they do not change the trajectory, or extend it:
# --steps), and which describe the invocation, not the run (they are not saved among its settings).
CHANGEABLE_ON_RESUME_TAG, NOT_A_SETTING_TAG = "changeable on resume", "not a setting"
CHANGEABLE, INVOCATION = frozenset({CHANGEABLE_ON_RESUME_TAG}), frozenset({NOT_A_SETTING_TAG})


def check_training_dtype(name: str):
    check_dtype(name)
    fail_if(
        DTYPE_NAMES.get(name) == "float16",
        "training in float16 needs loss scaling, which gptkit does not do: use bfloat16 or float32",
    )


def check_wandb_project(project: str):
    fail_if(not project.strip(), "--wandb needs a project name: --wandb PROJECT")


def check_lora_targets(targets: str):
    unknown = [t for t in targets.split(",") if t.strip() not in LORA_TARGETS]
    fail_if(bool(unknown), f"--lora-targets: no layers named '{','.join(unknown)}': use {', '.join(LORA_TARGETS)}")


@dataclass
class TrainConfig:
    """What `gptkit train` was asked for. None means "the default" (filled in by with_defaults: an option's fallback
    or a value worked out from the model and the machine), which for a resumed run is the value it was started with."""

    data: str = argument(
        "Text (as gptkit prepare takes it), a folder made by gptkit prepare, nanoGPT's train.bin / val.bin folder, or "
        "build-nanogpt's .npy shards.",
        path=True,
        tags=INVOCATION,
    )
    model: str | None = option(
        None,
        "Preset (gpt2, gpt2-medium, ..., mini, micro, nano) to train from scratch, or a checkpoint directory (or "
        "nanoGPT / build-nanogpt .pt file) to fine-tune.",
        panel=MODEL,
        fallback="gpt2",
        tags=INVOCATION,
    )
    block_size: int | None = option(
        None,
        "Tokens per sequence: a new model's context; a checkpoint trains on windows this long and keeps its whole "
        "context.",
        panel=MODEL,
        min=1,
        default_text="the model's context, at most 256 on CPU",
    )
    n_layer: int | None = option(
        None, "Layers of a model trained from scratch.", panel=MODEL, min=1, default_text="the preset's"
    )
    n_head: int | None = option(
        None, "Attention heads of a model trained from scratch.", panel=MODEL, min=1, default_text="the preset's"
    )
    n_embd: int | None = option(
        None,
        "Width of a model trained from scratch (a multiple of --n-head).",
        panel=MODEL,
        min=1,
        default_text="the preset's",
    )
    dropout: float | None = option(
        None,
        "Dropout probability in training.",
        panel=MODEL,
        min=0,
        below=1,
        default_text="0 from scratch, the checkpoint's own",
    )
    val_fraction: float | None = option(
        None,
        "Tail of the data held out for validation.",
        panel=DATA,
        min=0,
        below=1,
        fallback=0.1,
        default_text="0.1; a prepared folder's own; none for nanoGPT / build-nanogpt folders, which have val files",
    )
    train_on_prompt: bool = option(
        False, "Conversations: the loss counts every token (system, user and reply), not only the replies.", panel=DATA
    )
    batch_size: int | None = option(
        None, "Sequences per micro-step, per process.", panel=OPTIMIZATION, min=1, default_text="4 on CPU, 16 on GPU"
    )
    grad_accum: int | None = option(None, "Micro-steps per optimizer step.", panel=OPTIMIZATION, min=1, fallback=1)
    tokens_per_step: int | None = option(
        None, "Tokens per optimizer step over all processes; sets --grad-accum.", panel=OPTIMIZATION, min=1
    )
    optimizer: str | None = option(
        None,
        "muon: Muon for the blocks' weight matrices, AdamW for embeddings, biases and norms; or adamw for all.",
        panel=OPTIMIZATION,
        choices=OPTIMIZERS,
        message="{flag} {value} is not one gptkit has: use " + " or ".join(OPTIMIZERS),
        default_text="muon from scratch, adamw fine-tuning",
    )
    lr: float | None = option(
        None,
        "Peak learning rate (Muon's with --optimizer muon).",
        panel=OPTIMIZATION,
        above=0,
        default_text="AdamW 6e-4 from scratch, 3e-5 fine-tuning; Muon 0.02 from scratch, 1e-3 fine-tuning",
    )
    embedding_lr: float | None = option(
        None,
        "With --optimizer muon: AdamW's peak learning rate of the embeddings (wte, which is also the tied output "
        "head, and wpe).",
        panel=OPTIMIZATION,
        above=0,
        default_text="0.008 from scratch, AdamW's 3e-5 fine-tuning",
    )
    scalar_lr: float | None = option(
        None,
        "With --optimizer muon: AdamW's peak learning rate of the biases and layer norms.",
        panel=OPTIMIZATION,
        above=0,
        default_text="0.008 from scratch, AdamW's 3e-5 fine-tuning",
    )
    muon_momentum_warmup: int | None = option(
        None,
        "With --optimizer muon: steps over which Muon's momentum rises linearly from 0.85 to 0.95.",
        panel=OPTIMIZATION,
        min=0,
        default_text="300 from scratch, 0 fine-tuning",
    )
    weight_decay: float | None = option(
        None, "Weight decay of the weight matrices (AdamW's, and Muon's).", panel=OPTIMIZATION, min=0, fallback=0.1
    )
    seed: int | None = option(None, "Random seed of the weights and the data order.", panel=OPTIMIZATION, fallback=1337)
    steps: int | None = option(None, "Optimizer steps.", panel=SCHEDULE, min=1, fallback=1000, tags=CHANGEABLE)
    schedule: str | None = option(
        None,
        "The learning rate after the warmup: cosine decay to the minimum; linear decay to it; or wsd (warmup-stable-"
        "decay): constant, then linear decay to it over the last --cooldown-fraction of the steps.",
        panel=SCHEDULE,
        choices=SCHEDULES,
        message="{flag} {value} is not one gptkit has: use " + ", ".join(SCHEDULES),
        default_text="linear for Muon from scratch, else cosine",
    )
    cooldown_fraction: float | None = option(
        None, "wsd: the fraction of the steps spent decaying.", panel=SCHEDULE, above=0, max=1, fallback=0.7
    )
    warmup_steps: int | None = option(
        None, "Steps of linear warmup.", panel=SCHEDULE, min=0, default_text="0 for Muon from scratch, else steps / 20"
    )
    min_lr_fraction: float | None = option(
        None,
        "The learning rate at the end of the decay, as a fraction of each group's peak.",
        panel=SCHEDULE,
        min=0,
        max=1,
        default_text="0 for Muon from scratch, else 0.1",
    )
    min_lr: float | None = option(
        None,
        "The learning rate at the end of the decay, as a value (of --lr; the other groups' scale alike).",
        panel=SCHEDULE,
        min=0,
        default_text="lr x --min-lr-fraction",
    )
    target_loss: float | None = option(
        None,
        "Stop at the first evaluation whose validation loss is at most this, and report the steps, tokens and time "
        "to it.",
        panel=SCHEDULE,
        above=0,
        tags=CHANGEABLE,
    )
    eval_every: int | None = option(
        None,
        "Validation loss every N steps (0: at the end only).",
        panel=EVALUATION_AND_SAVING,
        min=0,
        fallback=250,
        tags=CHANGEABLE,
    )
    eval_tokens: int | None = option(
        None,
        "Validation tokens per evaluation.",
        panel=EVALUATION_AND_SAVING,
        min=0,
        default_text="20 batches",
        tags=CHANGEABLE,
    )
    hellaswag: str | None = option(
        None,
        "A HellaSwag jsonl file: acc_norm at each evaluation, in the log and metrics.jsonl.",
        panel=EVALUATION_AND_SAVING,
        path=True,
        tags=CHANGEABLE,
    )
    hellaswag_examples: int | None = option(
        None,
        "HellaSwag examples scored (the file's first N).",
        panel=EVALUATION_AND_SAVING,
        min=1,
        fallback=500,
        tags=CHANGEABLE,
    )
    save_every: int | None = option(
        None,
        "Checkpoint every N steps (0: at the end only).",
        panel=EVALUATION_AND_SAVING,
        min=0,
        fallback=500,
        tags=CHANGEABLE,
    )
    out: str | None = option(
        None,
        "Run folder.",
        panel=EVALUATION_AND_SAVING,
        path=True,
        default_text="checkpoints/<data name>-<preset>, or <data name>-<checkpoint>-finetuned",
        tags=CHANGEABLE | INVOCATION,
    )
    resume: bool = option(
        False, "Continue the run in --out exactly where it stopped.", panel=EVALUATION_AND_SAVING, tags=INVOCATION
    )
    overwrite: bool = option(
        False, "Start over in an --out that holds a run.", panel=EVALUATION_AND_SAVING, tags=INVOCATION
    )
    device: str | None = option(
        None,
        "auto, cpu, cuda, cuda:N or mps.",
        panel=HARDWARE,
        check=check_device,
        default_text="auto",
        tags=CHANGEABLE,
    )
    dtype: str | None = option(
        None,
        "auto, float32 or bfloat16 (autocast).",
        panel=HARDWARE,
        check=check_training_dtype,
        default_text="auto: bf16 where fast",
    )
    compile: bool | None = option(
        None, "torch.compile the model.", panel=HARDWARE, fallback=False, show_default=False, tags=CHANGEABLE
    )
    activation_checkpointing: bool | None = option(
        None,
        "Recompute each block's activations in the backward pass: less memory, about a third more compute.",
        panel=HARDWARE,
        fallback=False,
        show_default=False,
        tags=CHANGEABLE,
    )
    fsdp: bool | None = option(
        None,
        "Under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2), each holding 1/N "
        "of them instead of a whole copy.",
        panel=HARDWARE,
        show_default=False,
        tags=CHANGEABLE,
    )
    lora_rank: int | None = option(
        None,
        "Train LoRA adapters of this rank on the frozen checkpoint --model (PEFT's format).",
        panel=LORA,
        min=1,
        default_text="off",
    )
    lora_alpha: float | None = option(
        None, "The adapters' scale: alpha / rank.", panel=LORA, above=0, default_text="2 x rank"
    )
    lora_dropout: float | None = option(
        None, "Dropout on the adapters' input.", panel=LORA, min=0, below=1, fallback=0.0
    )
    lora_targets: str | None = option(
        None,
        "The layers of each block that get adapters, comma-separated: attn (c_attn), proj (attn.c_proj), mlp (c_fc, "
        "c_proj).",
        panel=LORA,
        check=check_lora_targets,
        fallback="attn",
    )
    tensorboard: bool | None = option(
        None,
        "Log to TensorBoard event files in RUN/tensorboard (needs gptkit[tensorboard]).",
        panel=LOGGING,
        fallback=False,
        default_text="off; a resumed run: as it was",
        show_default=False,
        tags=CHANGEABLE,
    )
    wandb: str | None = option(
        None,
        "Log to this Weights & Biases project (needs gptkit[wandb]; WANDB_MODE=offline logs locally).",
        panel=LOGGING,
        check=check_wandb_project,
        metavar="PROJECT",
        default_text="off; a resumed run: as it was",
        tags=CHANGEABLE,
    )

    def __post_init__(self):
        for field, declaration in declared(TrainConfig):  # paths stay str: the settings are saved as JSON
            if declaration.path and isinstance(getattr(self, field.name), os.PathLike):
                setattr(self, field.name, str(getattr(self, field.name)))
        fail_if(self.resume and self.overwrite, "--resume and --overwrite contradict each other: give one")
        check_declared(self)
        check_combinations(self)


def check_combinations(c: TrainConfig):
    """The options that contradict each other. Options left None (their defaults) pass; with_defaults makes the
    config again once every default is filled in, which checks these again."""

    def given(*values) -> bool:
        return all(v is not None for v in values)

    fail_if(
        given(c.n_embd, c.n_head) and c.n_embd % c.n_head != 0,
        f"--n-embd {c.n_embd} must be divisible by --n-head {c.n_head} (each head gets n_embd / n_head dims)",
    )
    for name in MUON_ONLY:
        fail_if(
            given(getattr(c, name), c.optimizer) and c.optimizer != "muon",
            f"{flag_of(TrainConfig, name)} is for AdamW's groups beside Muon and Muon's momentum (with --optimizer "
            "muon); for AdamW alone use --lr",
        )
    fail_if(
        given(c.min_lr, c.min_lr_fraction, c.lr) and not math.isclose(c.min_lr, c.min_lr_fraction * c.lr),
        "--min-lr and --min-lr-fraction set the same thing: give one",
    )
    fail_if(
        given(c.cooldown_fraction, c.schedule) and c.schedule != "wsd",
        "--cooldown-fraction shapes the wsd schedule: add --schedule wsd",
    )
    fail_if(given(c.min_lr, c.lr) and c.min_lr > c.lr, f"--min-lr {c.min_lr} must not exceed --lr {c.lr}")
    fail_if(
        given(c.warmup_steps, c.steps) and c.warmup_steps > c.steps,
        f"--warmup-steps {c.warmup_steps} must not exceed --steps {c.steps}",
    )
    fail_if(
        bool(c.fsdp) and given(c.lora_rank),
        "--fsdp and --lora-rank: LoRA's frozen base is not sharded yet; train the adapters without --fsdp (torchrun "
        "alone copies the model to every process)",
    )
    fail_if(
        not given(c.lora_rank) and any(given(getattr(c, name)) for name in LORA_SHAPE),
        "--lora-alpha, --lora-dropout and --lora-targets shape LoRA adapters: add --lora-rank",
    )


CHANGEABLE_ON_RESUME = tagged(TrainConfig, CHANGEABLE_ON_RESUME_TAG)
NOT_SETTINGS = tagged(TrainConfig, NOT_A_SETTING_TAG)


def lora_of(cfg: TrainConfig) -> LoraSettings | None:
    """The LoRA adapters a with_defaults cfg trains, if any."""
    if cfg.lora_rank is None:
        return None
    return LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets.split(",")))


def settings_of(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}
