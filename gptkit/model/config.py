"""The model's shape (GPTConfig), its named sizes (PRESETS), and the shape of LoRA adapters (LoraSettings). No
torch: the CLI checks options against them before it imports torch."""

from dataclasses import asdict, dataclass

# GPTConfig.activation's values: F.gelu's `approximate` for each.
ACTIVATIONS = {"gelu_new": "tanh", "gelu": "none"}


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum context length (number of position embeddings)
    vocab_size: int = 50257  # GPT-2's BPE vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    # The MLP's GELU, by transformers' names: "gelu_new" the tanh approximation (GPT-2's, build-nanogpt's), "gelu" the
    # exact one (erf: nanoGPT's model.py), so that a model converted from nanoGPT computes what it was trained with.
    activation: str = "gelu_new"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# The four OpenAI GPT-2 sizes, and small models that train in minutes on a laptop CPU.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "mini": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256),  # 30M (19M of it embeddings)
    "micro": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=256),  # 7M
    "nano": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128),  # 3M
}


# --lora-targets names: the Linear layers of each block that get adapters.
LORA_TARGETS = {"attn": ("attn.c_attn",), "proj": ("attn.c_proj",), "mlp": ("mlp.c_fc", "mlp.c_proj")}


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    """The adapters' rank r."""
    alpha: float
    """Their scale: the update is alpha / rank * B A."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training."""
    targets: tuple[str, ...] = ("attn",)
    """Which layers get adapters (LORA_TARGETS' names)."""

    @property
    def modules(self) -> list[str]:
        return [module for target in self.targets for module in LORA_TARGETS[target]]
