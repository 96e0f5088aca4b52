"""The command line: option parsing only. Each command checks its options (gptkit.options, train_config.check:
no torch) and only then imports its module (and so torch), which keeps `gptkit --help` and a bad option fast."""

import dataclasses
import errno
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptkit.errors import GptkitError

app = typer.Typer(
    name="gptkit",
    help="Train, sample, evaluate and inspect GPT-2 class language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


# The help panels (rich_help_panel) that group the options; a new option goes in one of them. train's, in the order
# one thinks about a run: MODEL, DATA, OPTIMIZATION, SCHEDULE, EVALUATION_AND_SAVING, HARDWARE, LOGGING; sample's:
# MODEL, SAMPLING, HARDWARE; eval's: SCORING, OUTPUT, HARDWARE; serve's: MODEL, SERVER, LIMITS, HARDWARE, SPEED.
# A panel shows only once an option is in it.
MODEL = "Model"
DATA = "Data"
OPTIMIZATION = "Optimization"
SCHEDULE = "Schedule"
EVALUATION_AND_SAVING = "Evaluation and saving"
HARDWARE = "Hardware"
LOGGING = "Logging"
LORA = "LoRA"
SAMPLING = "Sampling"
SPEED = "Speed"
SCORING = "Scoring"
OUTPUT = "Output"
SERVER = "Server"
LIMITS = "Limits"


def fail(message: str, code: int = 1):
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def unexpected_error(e: Exception) -> str:
    """The one line for an exception that is not the user's doing (its first line only: torch's run long)."""
    what = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}" if str(e).strip() else type(e).__name__
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    where = f" on rank {os.environ.get('RANK', '?')}" if world_size > 1 else ""
    return (
        f"gptkit hit an unexpected error{where}: {what}; this is a bug, please report it with the output of "
        "`gptkit env`; set GPTKIT_DEBUG=1 for the traceback"
    )


def command(fn):
    """Register fn as a subcommand; turn errors into one line on stderr and a non-zero exit (user errors say what to
    do; anything else says it is a bug, with the traceback only under GPTKIT_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own ways out (exit codes, usage errors)
            raise
        except GptkitError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                fail(f"no space left on the device writing {e.filename or 'a file'}: free some space and try again")
            fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        except Exception as e:
            if os.environ.get("GPTKIT_DEBUG", "") not in ("", "0"):
                raise
            fail(unexpected_error(e))

    return app.command()(wrapper)


def options_from(options_class, arguments: dict):
    """options_class (a dataclass of a command's options) made from the command's arguments (its locals() on entry):
    each option is declared once, as a parameter of the Typer command named as the field it fills."""
    names = {field.name for field in dataclasses.fields(options_class)}
    if arguments.keys() != names:
        raise TypeError(
            f"{options_class.__name__} and its command's options differ in {sorted(arguments.keys() ^ names)}"
        )
    return options_class(**arguments)


# --- download --------------------------------------------------------------------------------------------------------


@command
def download(
    name: Annotated[str, typer.Argument(help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or org/name")],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Checkpoint directory (default: checkpoints/<name>).")
    ] = None,
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit of the repo (default: main).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again, replacing what --out holds.")] = False,
):
    """Download GPT-2 weights from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply)."""
    from gptkit.checkpoint.hub import download as download_model

    download_model(name, out, revision, force)


# --- prepare ---------------------------------------------------------------------------------------------------------


@command
def prepare(
    data: Annotated[
        Path,
        typer.Argument(
            help="A UTF-8 text file, .jsonl / .jsonl.gz (a \"text\" field a line), .parquet (a \"text\" column), or a "
            "folder of them."
        ),
    ],
    out: Annotated[Optional[Path], typer.Option(help="Token folder. \\[default: <data>-tokens beside DATA]")] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Tail of the tokens that gptkit train holds out for validation.")
    ] = 0.1,
    shard_tokens: Annotated[int, typer.Option(help="Tokens per shard (2 bytes each).")] = 100_000_000,
):
    """Tokenize DATA once, streaming on every core, into uint16 token shards for gptkit train (resumable)."""
    from rich.console import Console

    from gptkit.options import check_prepare

    check_prepare(data, val_fraction, shard_tokens)

    from gptkit.data.prepare import default_out
    from gptkit.data.prepare import prepare as run_prepare
    from gptkit.progress import PrepareProgress

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    progress = PrepareProgress(enabled=console.is_terminal)
    try:
        result = run_prepare(data, out or default_out(data), val_fraction, shard_tokens, progress)
    finally:
        progress.close()
    manifest = result.manifest
    if result.tokens_made == 0 and result.bytes_read == 0:
        done = "already prepared"
    else:
        megabytes = result.bytes_read / 1e6
        done = (
            f"{megabytes:,.1f} MB in {result.seconds:.1f} s ({megabytes / result.seconds:,.1f} MB/s, "
            f"{result.tokens_made / result.seconds:,.0f} tokens/s)"
        )
    val = manifest["tokens"] - manifest["val_start"]
    console.print(
        f"{result.out}: {manifest['tokens']:,} tokens in {len(manifest['shards'])} shard(s), the last {val:,} for "
        f"validation | {done} | train with: gptkit train {result.out}"
    )


# --- train -----------------------------------------------------------------------------------------------------------


@command
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Text (as gptkit prepare takes it), a folder made by gptkit prepare, nanoGPT's train.bin / val.bin "
            "folder, or build-nanogpt's .npy shards."
        ),
    ],
    model: Annotated[
        Optional[str],
        typer.Option(
            help="Preset (gpt2, gpt2-medium, ..., mini, micro, nano) to train from scratch, or a checkpoint directory "
            "(or nanoGPT / build-nanogpt .pt file) to fine-tune. \\[default: gpt2]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    block_size: Annotated[
        Optional[int],
        typer.Option(
            help="Tokens per sequence: a new model's context; a checkpoint trains on windows this long and keeps "
            "its whole context. \\[default: the model's context, at most 256 on CPU]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    n_layer: Annotated[
        Optional[int],
        typer.Option(help="Layers of a model trained from scratch. \\[default: the preset's]", rich_help_panel=MODEL),
    ] = None,
    n_head: Annotated[
        Optional[int],
        typer.Option(
            help="Attention heads of a model trained from scratch. \\[default: the preset's]", rich_help_panel=MODEL
        ),
    ] = None,
    n_embd: Annotated[
        Optional[int],
        typer.Option(
            help="Width of a model trained from scratch (a multiple of --n-head). \\[default: the preset's]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    dropout: Annotated[
        Optional[float],
        typer.Option(
            help="Dropout probability in training. \\[default: 0 from scratch, the checkpoint's own]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            help="Tail of the data held out for validation. \\[default: 0.1; a prepared folder's own; none for "
            "nanoGPT / build-nanogpt folders, which have val files]",
            rich_help_panel=DATA,
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            help="Sequences per micro-step, per process. \\[default: 4 on CPU, 16 on GPU]",
            rich_help_panel=OPTIMIZATION,
        ),
    ] = None,
    grad_accum: Annotated[
        Optional[int], typer.Option(help="Micro-steps per optimizer step. \\[default: 1]", rich_help_panel=OPTIMIZATION)
    ] = None,
    tokens_per_step: Annotated[
        Optional[int],
        typer.Option(
            help="Tokens per optimizer step over all processes; sets --grad-accum.", rich_help_panel=OPTIMIZATION
        ),
    ] = None,
    optimizer: Annotated[
        Optional[str],
        typer.Option(
            help="adamw, or muon: Muon for the blocks' weight matrices, AdamW for embeddings, biases and norms. "
            "\\[default: adamw]",
            rich_help_panel=OPTIMIZATION,
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(
            help="Peak learning rate (Muon's with --optimizer muon). \\[default: AdamW 6e-4 from scratch, 3e-5 "
            "fine-tuning; Muon 0.02 from scratch, 1e-3 fine-tuning]",
            rich_help_panel=OPTIMIZATION,
        ),
    ] = None,
    adam_lr: Annotated[
        Optional[float],
        typer.Option(
            help="With --optimizer muon: AdamW's peak learning rate. \\[default: AdamW's --lr default]",
            rich_help_panel=OPTIMIZATION,
        ),
    ] = None,
    weight_decay: Annotated[
        Optional[float],
        typer.Option(
            help="Weight decay of the weight matrices (AdamW's, and Muon's). \\[default: 0.1]",
            rich_help_panel=OPTIMIZATION,
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            help="Random seed of the weights and the data order. \\[default: 1337]", rich_help_panel=OPTIMIZATION
        ),
    ] = None,
    steps: Annotated[
        Optional[int], typer.Option(help="Optimizer steps. \\[default: 1000]", rich_help_panel=SCHEDULE)
    ] = None,
    warmup_steps: Annotated[
        Optional[int], typer.Option(help="Steps of linear warmup. \\[default: steps / 20]", rich_help_panel=SCHEDULE)
    ] = None,
    min_lr: Annotated[
        Optional[float],
        typer.Option(
            help="Learning rate at the end of the cosine decay. \\[default: lr / 10]", rich_help_panel=SCHEDULE
        ),
    ] = None,
    eval_every: Annotated[
        Optional[int],
        typer.Option(
            help="Validation loss every N steps (0: at the end only). \\[default: 250]",
            rich_help_panel=EVALUATION_AND_SAVING,
        ),
    ] = None,
    eval_tokens: Annotated[
        Optional[int],
        typer.Option(
            help="Validation tokens per evaluation. \\[default: 20 batches]", rich_help_panel=EVALUATION_AND_SAVING
        ),
    ] = None,
    hellaswag: Annotated[
        Optional[Path],
        typer.Option(
            help="A HellaSwag jsonl file: acc_norm at each evaluation, in the log and metrics.jsonl.",
            rich_help_panel=EVALUATION_AND_SAVING,
        ),
    ] = None,
    hellaswag_examples: Annotated[
        Optional[int],
        typer.Option(
            help="HellaSwag examples scored (the file's first N). \\[default: 500]",
            rich_help_panel=EVALUATION_AND_SAVING,
        ),
    ] = None,
    save_every: Annotated[
        Optional[int],
        typer.Option(
            help="Checkpoint every N steps (0: at the end only). \\[default: 500]",
            rich_help_panel=EVALUATION_AND_SAVING,
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Run folder. \\[default: checkpoints/<data name>-<preset>, or <data name>-<checkpoint>-finetuned]",
            rich_help_panel=EVALUATION_AND_SAVING,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out exactly where it stopped.",
            rich_help_panel=EVALUATION_AND_SAVING,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Start over in an --out that holds a run.", rich_help_panel=EVALUATION_AND_SAVING
        ),
    ] = False,
    device: Annotated[
        Optional[str],
        typer.Option(help="auto, cpu, cuda, cuda:N or mps. \\[default: auto]", rich_help_panel=HARDWARE),
    ] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(
            help="auto, float32 or bfloat16 (autocast). \\[default: auto: bf16 where fast]", rich_help_panel=HARDWARE
        ),
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option(
            "--compile/--no-compile", help="torch.compile the model.", show_default=False, rich_help_panel=HARDWARE
        ),
    ] = None,
    activation_checkpointing: Annotated[
        Optional[bool],
        typer.Option(
            "--activation-checkpointing/--no-activation-checkpointing",
            help="Recompute each block's activations in the backward pass: less memory, about a third more compute.",
            show_default=False,
            rich_help_panel=HARDWARE,
        ),
    ] = None,
    fsdp: Annotated[
        Optional[bool],
        typer.Option(
            "--fsdp/--no-fsdp",
            help="Under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2), each "
            "holding 1/N of them instead of a whole copy.",
            show_default=False,
            rich_help_panel=HARDWARE,
        ),
    ] = None,
    lora_rank: Annotated[
        Optional[int],
        typer.Option(
            help="Train LoRA adapters of this rank on the frozen checkpoint --model (PEFT's format). \\[default: off]",
            rich_help_panel=LORA,
        ),
    ] = None,
    lora_alpha: Annotated[
        Optional[float],
        typer.Option(help="The adapters' scale: alpha / rank. \\[default: 2 x rank]", rich_help_panel=LORA),
    ] = None,
    lora_dropout: Annotated[
        Optional[float], typer.Option(help="Dropout on the adapters' input. \\[default: 0]", rich_help_panel=LORA)
    ] = None,
    lora_targets: Annotated[
        Optional[str],
        typer.Option(
            help="The layers of each block that get adapters, comma-separated: attn (c_attn), proj (attn.c_proj), "
            "mlp (c_fc, c_proj). \\[default: attn]",
            rich_help_panel=LORA,
        ),
    ] = None,
    tensorboard: Annotated[
        Optional[bool],
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="Log to TensorBoard event files in RUN/tensorboard (needs gptkit\\[tensorboard]). "
            "\\[default: off; a resumed run: as it was]",
            show_default=False,
            rich_help_panel=LOGGING,
        ),
    ] = None,
    wandb: Annotated[
        Optional[str],
        typer.Option(
            metavar="PROJECT",
            help="Log to this Weights & Biases project (needs gptkit\\[wandb]; WANDB_MODE=offline logs locally). "
            "\\[default: off; a resumed run: as it was]",
            rich_help_panel=LOGGING,
        ),
    ] = None,
):
    """Train a model from scratch or from a checkpoint (under torchrun: on several processes with DDP)."""
    arguments = dict(locals())  # the options, before any other name is bound here
    from gptkit.training.config import TrainConfig, check

    config = options_from(TrainConfig, arguments)
    check(config)
    from gptkit.training.loop import EXIT_INTERRUPTED, Interrupted
    from gptkit.training.loop import train as run_training

    try:
        run_training(config)
    except Interrupted as e:
        if os.environ.get("RANK", "0") == "0":
            from rich.console import Console

            Console(stderr=True).print(str(e), style="yellow", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


# --- sample ----------------------------------------------------------------------------------------------------------


@command
def sample(
    prompt: Annotated[str, typer.Argument(help="The text to continue; '-' reads standard input.")] = "",
    ckpt: Annotated[
        Optional[Path],
        typer.Option(
            help="Checkpoint directory (or .safetensors, or nanoGPT / build-nanogpt .pt file). Default: the newest "
            "one under checkpoints/.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens to generate per sample, at most.", rich_help_panel=SAMPLING)
    ] = 200,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature; 0 is greedy.", rich_help_panel=SAMPLING)
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option(help="Sample among the k most likely tokens; 0 turns it off.", rich_help_panel=SAMPLING)
    ] = 50,
    top_p: Annotated[
        Optional[float],
        typer.Option(
            help="Nucleus sampling: the most likely tokens holding this probability.", rich_help_panel=SAMPLING
        ),
    ] = None,
    num_samples: Annotated[
        int,
        typer.Option(help="Samples to generate (as one batch), printed one after another.", rich_help_panel=SAMPLING),
    ] = 1,
    seed: Annotated[
        Optional[int], typer.Option(help="Random seed, for reproducible samples.", rich_help_panel=SAMPLING)
    ] = None,
    stop: Annotated[
        Optional[str],
        typer.Option(help="Stop a sample at this text (as well as at <|endoftext|>).", rich_help_panel=SAMPLING),
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.", rich_help_panel=HARDWARE)] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=HARDWARE)] = "auto",
    quantize: Annotated[
        Optional[str],
        typer.Option(help="int8: weight-only int8 (per-channel scales), quantized at load.", rich_help_panel=SPEED),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the one-token decoding step (compiling takes a while).",
            rich_help_panel=SPEED,
        ),
    ] = False,
    draft: Annotated[
        Optional[Path],
        typer.Option(
            help="Speculative decoding: a smaller checkpoint with the same tokenizer proposes tokens.",
            rich_help_panel=SPEED,
        ),
    ] = None,
    draft_tokens: Annotated[
        int, typer.Option(help="Tokens the --draft model proposes per step.", rich_help_panel=SPEED)
    ] = 4,
):
    """Generate text from a checkpoint, streaming it as it comes."""
    arguments = dict(locals())  # the options, before any other name is bound here
    from gptkit.options import SampleOptions

    options = options_from(SampleOptions, arguments)
    from gptkit.commands.sample import sample as run_sample

    run_sample(options)


# --- serve -----------------------------------------------------------------------------------------------------------


@command
def serve(
    ckpt: Annotated[
        Optional[Path],
        typer.Argument(help="Checkpoint directory. \\[default: the newest one under checkpoints/]", show_default=False),
    ] = None,
    host: Annotated[
        str, typer.Option(help="The address to listen on (one other than loopback needs a key).", rich_help_panel=SERVER)
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on; 0: any free one.", rich_help_panel=SERVER)] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            envvar="GPTKIT_API_KEY",
            help="Every request but /health must send 'Authorization: Bearer KEY'.",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    no_api_key: Annotated[
        bool,
        typer.Option(
            "--no-api-key", help="Serve an address other than loopback without a key.", rich_help_panel=SERVER
        ),
    ] = False,
    chat_template: Annotated[
        Optional[Path],
        typer.Option(
            help="A JSON file of chat template keys for /v1/chat/completions. \\[default: the checkpoint's, or "
            "'User: ... Assistant: ...']",
            rich_help_panel=MODEL,
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded at once.", rich_help_panel=LIMITS)] = 16,
    max_body_mb: Annotated[float, typer.Option(help="The largest request body, in MB.", rich_help_panel=LIMITS)] = 1.0,
    grace_period: Annotated[
        float,
        typer.Option(
            help="Seconds SIGTERM or Ctrl-C give the requests in flight before cancelling them.", rich_help_panel=LIMITS
        ),
    ] = 30.0,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.", rich_help_panel=HARDWARE)] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=HARDWARE)] = "auto",
    quantize: Annotated[
        Optional[str],
        typer.Option(help="int8: weight-only int8 (per-channel scales), quantized at load.", rich_help_panel=SPEED),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option("--compile", help="torch.compile the decoding step (at start-up).", rich_help_panel=SPEED),
    ] = False,
):
    """Serve a checkpoint over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions), batching requests."""
    arguments = dict(locals())  # the options, before any other name is bound here
    from gptkit.options import ServeOptions

    options = options_from(ServeOptions, arguments)
    from gptkit.serve.app import serve as run_server

    run_server(options)


# --- eval ------------------------------------------------------------------------------------------------------------


@command
def eval(
    ckpt: Annotated[
        Path, typer.Argument(help="A checkpoint directory, .safetensors file, or nanoGPT / build-nanogpt .pt file.")
    ],
    text: Annotated[
        Optional[Path],
        typer.Argument(
            help="A UTF-8 text file or a folder of .txt files. Default: the validation split recorded by gptkit "
            "train (none with --hellaswag)."
        ),
    ] = None,
    block_size: Annotated[
        Optional[int],
        typer.Option("--block-size", help="Tokens per window. Default: the model's context.", rich_help_panel=SCORING),
    ] = None,
    stride: Annotated[
        Optional[int],
        typer.Option(
            help="Window step; overlapping windows score only their new tokens. Default: the block size.",
            rich_help_panel=SCORING,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Windows per forward pass.", rich_help_panel=SCORING)
    ] = 4,
    max_tokens: Annotated[
        Optional[int], typer.Option("--max-tokens", help="Score at most this many tokens.", rich_help_panel=SCORING)
    ] = None,
    hellaswag: Annotated[
        Optional[Path],
        typer.Option(
            help="A HellaSwag jsonl file (ctx, endings, label): hellaswag_val.jsonl, from the data folder of "
            "github.com/rowanz/hellaswag.",
            rich_help_panel=SCORING,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON only.", rich_help_panel=OUTPUT)
    ] = False,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.", rich_help_panel=HARDWARE)] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=HARDWARE)] = "auto",
    quantize: Annotated[
        Optional[str],
        typer.Option(help="int8: weight-only int8 (per-channel scales), quantized at load.", rich_help_panel=HARDWARE),
    ] = None,
):
    """Loss, perplexity and bits per byte of a text, and HellaSwag accuracy; appended to the checkpoint's evals.jsonl."""
    arguments = dict(locals())  # the options, before any other name is bound here
    from gptkit.options import EvalOptions

    options = options_from(EvalOptions, arguments)
    from gptkit.commands.eval import run_eval

    run_eval(options)


# --- quantize --------------------------------------------------------------------------------------------------------


@command
def quantize(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint directory or .safetensors file (float weights).")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Checkpoint directory to write (default: <name>-int8 beside CKPT)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the checkpoint --out holds.")] = False,
):
    """Write CKPT with int8 weights (one scale per output channel) as a checkpoint for sample and eval."""
    from gptkit.options import check_quantize_command

    check_quantize_command(ckpt, out, overwrite)
    from gptkit.commands.quantize import quantize_checkpoint

    quantize_checkpoint(ckpt, out, overwrite)


# --- merge -----------------------------------------------------------------------------------------------------------


@command
def merge(
    run: Annotated[Path, typer.Argument(help="A LoRA run folder (or a save of one): adapters and the base they name.")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Checkpoint directory to write (default: <run>-merged beside RUN)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the checkpoint --out holds.")] = False,
):
    """Write a LoRA run's base with its adapters merged into the weights, as a plain checkpoint (same logits)."""
    from gptkit.options import check_merge_command

    check_merge_command(run, out, overwrite)
    from gptkit.commands.merge import merge_adapters

    merge_adapters(run, out, overwrite)


# --- export ----------------------------------------------------------------------------------------------------------


@command
def export(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint directory or .safetensors file (float or int8).")],
    format: Annotated[
        str,
        typer.Option("--format", help="The file format: gguf (llama.cpp, Ollama, LM Studio; needs gptkit\\[gguf])."),
    ],
    type: Annotated[
        str,
        typer.Option(
            "--type", help="The weight matrices' type: f32, f16, bf16 or q8_0 (biases, norms, positions stay f32)."
        ),
    ] = "f16",
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="The file to write. \\[default: <name>-<type>.gguf beside CKPT]"),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
):
    """Write CKPT as a GGUF file, for llama.cpp, Ollama and LM Studio."""
    arguments = dict(locals())  # the options, before any other name is bound here
    from gptkit.options import ExportOptions

    options = options_from(ExportOptions, arguments)
    from gptkit.checkpoint.gguf import export as run_export

    run_export(options)


# --- convert --------------------------------------------------------------------------------------------------------


@command
def convert(
    src: Annotated[Path, typer.Argument(help="nanoGPT's out/ckpt.pt or build-nanogpt's log/model_XXXXX.pt.")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Checkpoint directory to write. \\[default: SRC without .pt, beside it]"),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the checkpoint --out holds.")] = False,
):
    """Write a nanoGPT or build-nanogpt checkpoint (.pt) as a gptkit checkpoint folder; no pickled code runs."""
    from gptkit.options import check_convert_command

    check_convert_command(src, out, overwrite)
    from gptkit.commands.convert import convert_checkpoint

    convert_checkpoint(src, out, overwrite)


# --- plot ------------------------------------------------------------------------------------------------------------


@command
def plot(
    runs: Annotated[
        list[Path], typer.Argument(metavar="RUN", help="Run folders (written by gptkit train).", show_default=False)
    ],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Write a .png, .svg or .pdf file (needs gptkit\\[plot]) instead of drawing in the terminal.",
        ),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="The x axis: step, tokens or time (spent in training steps).")] = "step",
    log: Annotated[bool, typer.Option("--log", help="A log scale for the loss axis.")] = False,
    smooth: Annotated[
        float, typer.Option(help="Smoothing of the training loss (exponential moving average weight, 0 to <1).")
    ] = 0.9,
):
    """Plot the training and validation loss of one or more runs, from their metrics.jsonl."""
    from rich.console import Console

    from gptkit.commands.plot import plot as draw

    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    draw(runs, out, x, log, smooth, Console(highlight=False), lambda line: errors.print(line, style="yellow"))
    if out is not None:
        errors.print(f"wrote {out}")


# --- inspect ---------------------------------------------------------------------------------------------------------


@command
def inspect(
    ckpt: Annotated[
        Path, typer.Argument(help="A checkpoint directory or .safetensors file, or a training run's folder.")
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Show what is in a checkpoint: config, parameters, tensors, how it was made (and a run's loss curve)."""
    import json

    from rich.console import Console

    from gptkit.commands.inspect import inspect_checkpoint, render

    info = inspect_checkpoint(ckpt)
    if json_output:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        render(info, Console())


# --- env -------------------------------------------------------------------------------------------------------------


@command
def env(json_output: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False):
    """Show versions, the CPU and its level, GPUs, and what --device/--dtype auto pick: paste it into a bug report."""
    import json

    from rich.console import Console

    from gptkit.commands.env import environment, render

    info = environment()
    if json_output:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        render(info, Console())


def main():
    app(prog_name="gptkit")
