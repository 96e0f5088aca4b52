"""The command line: a table of the commands (COMMANDS), each made into a Typer command from its options dataclass,
whose fields declare the options once (gptkit.options.declare). Running a command makes its options object, which
checks the options before anything heavy is imported, then imports the command's entry function and calls it with
that object; errors become one line on stderr (errors_as_one_line)."""

import dataclasses
import errno
import functools
import importlib
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Annotated, NamedTuple

import typer

from gptkit.errors import GptkitError
from gptkit.options import (
    ConvertOptions,
    DownloadOptions,
    EnvOptions,
    EvalOptions,
    ExportOptions,
    InspectOptions,
    MergeOptions,
    PlotOptions,
    PrepareOptions,
    QuantizeOptions,
    SampleOptions,
    ServeOptions,
    ChatOptions,
)
from gptkit.options.declare import Declaration, declared
from gptkit.training.config import TrainConfig


class Command(NamedTuple):
    name: str
    options: type  # the dataclass of its options, each a declare.option / declare.argument field
    entry: str  # "module:function", imported when the command runs; it takes the one options object
    help: str


COMMANDS = [
    Command(
        "download",
        DownloadOptions,
        "gptkit.commands.download:download",
        "Download GPT-2 weights from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply).",
    ),
    Command(
        "prepare",
        PrepareOptions,
        "gptkit.commands.prepare:prepare",
        "Tokenize DATA once, streaming on every core, into uint16 token shards for gptkit train (resumable).",
    ),
    Command(
        "train",
        TrainConfig,
        "gptkit.commands.train:train",
        "Train a model from scratch or from a checkpoint (under torchrun: on several processes with DDP).",
    ),
    Command(
        "sample",
        SampleOptions,
        "gptkit.commands.sample:sample",
        "Generate text from a checkpoint, streaming it as it comes.",
    ),
    Command(
        "chat",
        ChatOptions,
        "gptkit.commands.chat:chat",
        "Chat with a checkpoint in the terminal, replies streamed (a fine-tuned one's chat template, else the default).",
    ),
    Command(
        "serve",
        ServeOptions,
        "gptkit.serve.app:serve",
        "Serve a checkpoint over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions), batching requests.",
    ),
    Command(
        "eval",
        EvalOptions,
        "gptkit.commands.eval:run_eval",
        "Loss, perplexity and bits per byte of a text, and HellaSwag accuracy; appended to the checkpoint's "
        "evals.jsonl.",
    ),
    Command(
        "quantize",
        QuantizeOptions,
        "gptkit.commands.quantize:quantize",
        "Write CKPT with int8 weights (one scale per output channel) as a checkpoint for sample and eval.",
    ),
    Command(
        "merge",
        MergeOptions,
        "gptkit.commands.merge:merge",
        "Write a LoRA run's base with its adapters merged into the weights, as a plain checkpoint (same logits).",
    ),
    Command(
        "export",
        ExportOptions,
        "gptkit.commands.export:export",
        "Write CKPT as a GGUF file, for llama.cpp, Ollama and LM Studio.",
    ),
    Command(
        "convert",
        ConvertOptions,
        "gptkit.commands.convert:convert",
        "Write a nanoGPT or build-nanogpt checkpoint (.pt) as a gptkit checkpoint folder; no pickled code runs.",
    ),
    Command(
        "plot",
        PlotOptions,
        "gptkit.commands.plot:plot",
        "Plot the training and validation loss of one or more runs, from their metrics.jsonl.",
    ),
    Command(
        "inspect",
        InspectOptions,
        "gptkit.commands.inspect:inspect",
        "Show what is in a checkpoint: config, parameters, tensors, how it was made (and a run's loss curve).",
    ),
    Command(
        "env",
        EnvOptions,
        "gptkit.commands.env:env",
        "Show versions, the CPU and its level, GPUs, and what --device/--dtype auto pick: paste it into a bug report.",
    ),
]


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


def errors_as_one_line(fn):
    """fn, with its errors turned into one line on stderr and a non-zero exit (user errors say what to do; anything
    else says it is a bug, with the traceback only under GPTKIT_DEBUG=1)."""

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

    return wrapper


RICH_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def help_text(declaration: Declaration) -> str:
    """The option's help as rich markup: its text, then `[default: ...]` where the default is the command's pick."""
    default = declaration.shown_default()
    text = declaration.help + (f" [default: {default}]" if default is not None else "")
    return RICH_TAG.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)  # rich.markup.escape's rule


def typer_parameter(field: dataclasses.Field, declaration: Declaration, annotation) -> inspect.Parameter:
    """One field as a parameter of a Typer command: its type annotated with its typer.Argument / typer.Option."""
    default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
    if declaration.path:
        annotation = Path | None if default is None else Path
    if declaration.positional:
        info = typer.Argument(
            help=help_text(declaration), metavar=declaration.metavar, show_default=declaration.show_default
        )
    else:
        flag = declaration.flag_of(field.name)
        if annotation == bool | None:  # a switch whose None is "not given": --name/--no-name
            flag += f"/--no-{flag[2:]}"
        flags = [flag, declaration.short] if declaration.short else [flag]
        info = typer.Option(
            *flags,
            help=help_text(declaration),
            rich_help_panel=declaration.panel,
            show_default=declaration.show_default,
            envvar=declaration.envvar,
            metavar=declaration.metavar,
        )
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, info]
    )


def command_function(command: Command):
    """The function Typer runs for command: it makes the options object (which checks them), then imports the
    entry and calls it with it. Its signature, which Typer reads, is the options class's fields."""
    types = typing.get_type_hints(command.options)

    def run(**values):
        options = command.options(**values)
        module, function = command.entry.split(":")
        return getattr(importlib.import_module(module), function)(options)

    run.__name__, run.__doc__ = command.name, command.help
    run.__signature__ = inspect.Signature(
        [typer_parameter(field, declaration, types[field.name]) for field, declaration in declared(command.options)]
    )
    return run


app = typer.Typer(
    name="gptkit",
    help="Train, sample, evaluate and inspect GPT-2 class language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
for command in COMMANDS:
    app.command(command.name, help=command.help)(errors_as_one_line(command_function(command)))


def main():
    app(prog_name="gptkit")
