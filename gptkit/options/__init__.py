"""Every command's options, one dataclass a command (train's, TrainConfig, is in training/config.py), each option a
field declared once with declare.option: its flag, default, help, help panel and checks. An options object checks
itself when it is made, before torch is imported, so a command's function takes one as checked; what needs the
device or the model (does CUDA exist, is --block-size within the model's context) is checked where those are known.

declare: the declaration and the generic checks; shared: what several commands share (--dtype, --device,
--quantize, file checks); inference: sample, serve; checkpoints: quantize, merge, convert, export; data: download,
prepare; reports: eval, plot, inspect, env."""

from gptkit.options.checkpoints import ConvertOptions, ExportOptions, MergeOptions, QuantizeOptions
from gptkit.options.data import DownloadOptions, PrepareOptions, check_prepare
from gptkit.options.inference import ChatOptions, SampleOptions, ServeOptions
from gptkit.options.reports import EnvOptions, EvalOptions, InspectOptions, PlotOptions
from gptkit.options.shared import DTYPE_NAMES, check_device, check_dtype, check_hellaswag_file, check_window

__all__ = [
    "DTYPE_NAMES",
    "ConvertOptions",
    "DownloadOptions",
    "EnvOptions",
    "EvalOptions",
    "ExportOptions",
    "InspectOptions",
    "MergeOptions",
    "PlotOptions",
    "PrepareOptions",
    "QuantizeOptions",
    "SampleOptions",
    "ChatOptions",
    "ServeOptions",
    "check_device",
    "check_dtype",
    "check_hellaswag_file",
    "check_prepare",
    "check_window",
]
