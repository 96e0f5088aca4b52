"""The command line: option parsing only. Each command imports its module (and so torch) when it runs,
which keeps `gptkit --help` fast."""

import errno
import functools
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


def fail(message: str, code: int = 1):
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command(fn):
    """Register fn as a subcommand; turn user errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GptkitError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                fail(f"no space left on the device writing {e.filename or 'a file'}: free some space and try again")
            fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))

    return app.command()(wrapper)


# --- download --------------------------------------------------------------------------------------------------------


@command
def download(name: Annotated[str, typer.Argument(help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or org/name")]):
    """Download GPT-2 weights from the Hugging Face hub into checkpoints/."""
    raise GptkitError("download is not implemented yet")


# --- train -----------------------------------------------------------------------------------------------------------


@command
def train(data: Annotated[Path, typer.Argument(help="A UTF-8 text file or a folder of .txt files.")]):
    """Train a model from scratch or from a checkpoint."""
    raise GptkitError("train is not implemented yet")


# --- sample ----------------------------------------------------------------------------------------------------------


@command
def sample(prompt: Annotated[str, typer.Argument(help="The text to continue ('-' reads standard input).")] = ""):
    """Generate text from a checkpoint."""
    raise GptkitError("sample is not implemented yet")


# --- eval ------------------------------------------------------------------------------------------------------------


@command
def eval(ckpt: Annotated[Path, typer.Argument(help="A checkpoint directory or .safetensors file.")]):
    """Loss, perplexity and accuracy of a checkpoint."""
    raise GptkitError("eval is not implemented yet")


# --- inspect ---------------------------------------------------------------------------------------------------------


@command
def inspect(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint directory or .safetensors file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Show what is in a checkpoint: config, parameters, tensors, how it was made."""
    import json

    from rich.console import Console

    from gptkit.inspect import inspect_checkpoint, render

    info = inspect_checkpoint(ckpt)
    if json_output:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        render(info, Console())


def main():
    app(prog_name="gptkit")
