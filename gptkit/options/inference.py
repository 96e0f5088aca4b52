"""The options of `gptkit sample` and `gptkit serve`, each declared once (see declare.option) and checked when the
object is made, before torch is imported."""

import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from gptkit.options.declare import (
    LIMITS,
    MODEL,
    SAMPLING,
    SERVER,
    SPEED,
    argument,
    check_declared,
    fail_if,
    option,
)
from gptkit.options.shared import check_checkpoint, device_option, dtype_option, is_loopback, quantize_option


def temperature_option():
    return option(
        1.0,
        "Softmax temperature; 0 is greedy.",
        panel=SAMPLING,
        min=0,
        message="{flag} must be 0 (greedy) or more, not {value}",
    )


def top_k_option():
    return option(
        50,
        "Sample among the k most likely tokens; 0 turns it off.",
        panel=SAMPLING,
        min=0,
        message="{flag} must be 0 (off) or more, not {value}",
    )


def top_p_option():
    return option(
        None, "Nucleus sampling: the most likely tokens holding this probability.", panel=SAMPLING, above=0, max=1
    )


def newest_checkpoint_argument(help: str):
    """CKPT, a positional that defaults to the newest checkpoint under checkpoints/."""
    return argument(
        help, None, check=check_checkpoint, default_text="the newest one under checkpoints/", show_default=False
    )


def compile_step_option():
    return option(False, "torch.compile the one-token decoding step (compiling takes a while).", panel=SPEED)


def seed_option():
    return option(None, "Random seed, for reproducible samples.", panel=SAMPLING)


@dataclass(frozen=True)
class SampleOptions:
    """`gptkit sample`'s options, checked when made (no torch needed): a SampleOptions is one sample() can run."""

    prompt: str = argument("The text to continue; '-' reads standard input.", "")
    ckpt: Path | None = option(
        None,
        "Checkpoint directory (or .safetensors, or nanoGPT / build-nanogpt .pt file). Default: the newest one under "
        "checkpoints/.",
        panel=MODEL,
        check=check_checkpoint,
    )
    max_new_tokens: int = option(200, "Tokens to generate per sample, at most.", panel=SAMPLING, min=1)
    temperature: float = temperature_option()
    top_k: int = top_k_option()
    top_p: float | None = top_p_option()
    num_samples: int = option(
        1, "Samples to generate (as one batch), printed one after another.", panel=SAMPLING, min=1
    )
    seed: int | None = seed_option()
    stop: str | None = option(None, "Stop a sample at this text (as well as at <|endoftext|>).", panel=SAMPLING)
    chat: bool = option(
        False,
        "The prompt is a user's message: write it with the checkpoint's chat template and print the reply.",
        panel=SAMPLING,
    )
    dtype: str = dtype_option()
    device: str = device_option()
    quantize: str | None = quantize_option(SPEED)
    compile: bool = compile_step_option()
    draft: Path | None = option(
        None,
        "Speculative decoding: a smaller checkpoint with the same tokenizer proposes tokens.",
        panel=SPEED,
        check=check_checkpoint,
    )
    draft_tokens: int = option(4, "Tokens the --draft model proposes per step.", panel=SPEED, min=1)

    def __post_init__(self):
        check_declared(self)


@dataclass(frozen=True)
class ChatOptions:
    """`gptkit chat`'s options, checked when made (no torch needed)."""

    ckpt: Path | None = newest_checkpoint_argument(
        "Checkpoint directory (or .safetensors, or nanoGPT / build-nanogpt .pt file)."
    )
    system: str | None = option(None, "A system message that starts the conversation.", panel=MODEL)
    max_new_tokens: int = option(
        256, "Tokens a reply may take, at most (and never more than half the context).", panel=SAMPLING, min=1
    )
    temperature: float = temperature_option()
    top_k: int = top_k_option()
    top_p: float | None = top_p_option()
    seed: int | None = seed_option()
    dtype: str = dtype_option()
    device: str = device_option()
    quantize: str | None = quantize_option(SPEED)
    compile: bool = compile_step_option()

    def __post_init__(self):
        check_declared(self)


@dataclass(frozen=True)
class ServeOptions:
    """`gptkit serve`'s options, checked when made (no torch needed): FastAPI and uvicorn are installed, the address
    is safe to listen on (loopback, else with an API key or --no-api-key), the limits make sense."""

    ckpt: Path | None = newest_checkpoint_argument("Checkpoint directory.")
    host: str = option("127.0.0.1", "The address to listen on (one other than loopback needs a key).", panel=SERVER)
    port: int = option(8000, "The port to listen on; 0: any free one.", panel=SERVER, min=0, max=65535)
    api_key: str | None = option(
        None,
        "Every request but /health must send 'Authorization: Bearer KEY'.",
        panel=SERVER,
        envvar="GPTKIT_API_KEY",
        show_default=False,
    )
    no_api_key: bool = option(False, "Serve an address other than loopback without a key.", panel=SERVER)
    chat_template: Path | None = option(
        None,
        "A JSON file of chat template keys for /v1/chat/completions.",
        panel=MODEL,
        default_text="the checkpoint's, or 'User: ... Assistant: ...'",
    )
    max_batch: int = option(16, "Sequences decoded at once.", panel=LIMITS, min=1)
    max_body_mb: float = option(1.0, "The largest request body, in MB.", panel=LIMITS, above=0)
    grace_period: float = option(
        30.0, "Seconds SIGTERM or Ctrl-C give the requests in flight before cancelling them.", panel=LIMITS, min=0
    )
    dtype: str = dtype_option()
    device: str = device_option()
    quantize: str | None = quantize_option(SPEED)
    compile: bool = option(False, "torch.compile the decoding step (at start-up).", panel=SPEED)

    def __post_init__(self):
        fail_if(
            importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
            "gptkit serve needs FastAPI and uvicorn: pip install 'gptkit[serve]' (from a clone: uv sync --extra serve)",
        )
        check_declared(self)
        fail_if(self.api_key == "", "--api-key (or GPTKIT_API_KEY) is empty: give a key, or leave it out")
        fail_if(self.api_key is not None and self.no_api_key, "--api-key and --no-api-key contradict each other")
        fail_if(
            not is_loopback(self.host) and self.api_key is None and not self.no_api_key,
            f"--host {self.host} can be reached from other machines: give --api-key KEY (or set GPTKIT_API_KEY), "
            "or add --no-api-key to serve it without a key",
        )
        _ = self.template  # --chat-template read and checked now, once (the property keeps it)

    @cached_property
    def template(self) -> dict | None:
        """--chat-template's template (over the default, checked); None without one."""
        from gptkit.inference.chat_template import read_template  # imported here, as in shared.check_checkpoint

        return None if self.chat_template is None else read_template(self.chat_template)
