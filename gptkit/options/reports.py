"""The options of the commands that report on a model, a run or the machine (eval, plot, inspect, env), each declared
once (see declare.option) and checked when the object is made (no torch)."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from gptkit.options.declare import BENCHMARKS, HARDWARE, OUTPUT, SCORING, argument, check_declared, fail_if, option
from gptkit.options.shared import (
    check_checkpoint,
    check_folder,
    check_hellaswag_file,
    check_text,
    check_window,
    device_option,
    dtype_option,
    quantize_option,
)

X_AXES = ("step", "tokens", "time")  # plot's --x
PLOT_FILE_FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class EvalOptions:
    """`gptkit eval`'s options, checked when made (no torch needed): an EvalOptions is one run_eval() can run."""

    ckpt: Path = argument(
        "A checkpoint directory, .safetensors file, or nanoGPT / build-nanogpt .pt file.", check=check_checkpoint
    )
    text: Path | None = argument(
        "A UTF-8 text file or a folder of .txt files. Default: the validation split recorded by gptkit train (none "
        "with --hellaswag).",
        None,
        check=check_text,
    )
    block_size: int | None = option(None, "Tokens per window. Default: the model's context.", panel=SCORING)
    stride: int | None = option(
        None,
        "Window step; overlapping windows score only their new tokens. Default: the block size.",
        panel=SCORING,
    )
    batch_size: int = option(4, "Windows per forward pass.", panel=SCORING, min=1)
    max_tokens: int | None = option(None, "Score at most this many tokens.", panel=SCORING, min=1)
    hellaswag: Path | None = option(
        None,
        "A HellaSwag jsonl file (ctx, endings, label): hellaswag_val.jsonl, from the data folder of "
        "github.com/rowanz/hellaswag.",
        panel=SCORING,
        check=check_hellaswag_file,
    )
    tasks: str | None = option(
        None,
        "lm-evaluation-harness tasks, comma-separated (hellaswag,arc_easy,piqa,...; `lm-eval ls tasks` lists them): "
        "needs gptkit[evals].",
        panel=BENCHMARKS,
    )
    num_fewshot: int | None = option(
        None, "Few-shot examples a --tasks prompt. Default: the task's.", panel=BENCHMARKS, min=0
    )
    limit: int | None = option(
        None, "Score at most this many examples of each task (--tasks, --core).", panel=BENCHMARKS, min=1
    )
    include_path: Path | None = option(
        None, "A folder of task YAML files of your own, for --tasks.", panel=BENCHMARKS, check=check_folder
    )
    core: Path | None = option(
        None,
        "The CORE score from DCLM's eval bundle folder (core.yaml, eval_meta_data.csv, eval_data/).",
        panel=BENCHMARKS,
        check=check_folder,
    )
    json_output: bool = option(False, "Print the results as JSON only.", flag="--json", panel=OUTPUT)
    dtype: str = dtype_option()
    device: str = device_option()
    quantize: str | None = quantize_option(HARDWARE)

    def __post_init__(self):
        from gptkit.checkpoint.folder import read_config  # imported here, as in shared.check_checkpoint

        check_window(self.block_size, self.stride)
        check_declared(self)
        benchmarks = self.tasks is not None or self.core is not None
        fail_if(
            benchmarks and (self.text is not None or self.hellaswag is not None),
            "--tasks and --core run on their own: leave out TEXT and --hellaswag (or run gptkit eval twice)",
        )
        fail_if(
            self.tasks is not None and importlib.util.find_spec("lm_eval") is None,
            "gptkit eval --tasks needs lm-evaluation-harness: pip install 'gptkit[evals]' (from a clone: uv sync "
            "--extra evals)",
        )
        check_window(self.block_size, self.stride, read_config(self.ckpt).block_size)  # the model's context


def check_plot_file(out: Path):
    fail_if(
        out.suffix.lower().lstrip(".") not in PLOT_FILE_FORMATS,
        f"cannot write a plot to {out}: name a .png, .svg or .pdf file",
    )
    fail_if(not out.parent.is_dir(), f"cannot write {out}: the folder {out.parent} does not exist")


@dataclass(frozen=True)
class PlotOptions:
    """`gptkit plot`'s options (what the runs hold, commands.plot checks as it reads them)."""

    runs: list[Path] = argument("Run folders (written by gptkit train).", metavar="RUN", show_default=False)
    out: Path | None = option(
        None,
        "Write a .png, .svg or .pdf file (needs gptkit[plot]) instead of drawing in the terminal.",
        flag="--out",
        short="-o",
        check=check_plot_file,
    )
    x: str = option("step", "The x axis: step, tokens or time (spent in training steps).", flag="--x", choices=X_AXES)
    log: bool = option(False, "A log scale for the loss axis.")
    smooth: float = option(
        0.9,
        "Smoothing of the training loss (exponential moving average weight, 0 to <1).",
        min=0,
        below=1,
        message="{flag} {value} must be in [0, 1): 0 is no smoothing, 0.99 very smooth",
    )

    def __post_init__(self):
        check_declared(self)


@dataclass(frozen=True)
class InspectOptions:
    """`gptkit inspect`'s options (commands.inspect finds out what CKPT is)."""

    ckpt: Path = argument("A checkpoint directory or .safetensors file, or a training run's folder.")
    json_output: bool = option(False, "Print the summary as JSON.", flag="--json")


@dataclass(frozen=True)
class EnvOptions:
    """`gptkit env`'s options."""

    json_output: bool = option(False, "Print it as JSON.", flag="--json")
