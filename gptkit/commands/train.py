"""`gptkit train`: the files and run folder the options name checked before torch is imported, then the run
(training.loop); Ctrl-C saves and says how to resume."""

import os

from gptkit.training.config import TrainConfig
from gptkit.training.runcheck import check


def train(config: TrainConfig) -> dict:
    check(config)
    from rich.console import Console

    from gptkit.training.loop import EXIT_INTERRUPTED, Interrupted
    from gptkit.training.loop import train as run_training

    try:
        return run_training(config)
    except Interrupted as e:
        if os.environ.get("RANK", "0") == "0":
            Console(stderr=True).print(str(e), style="yellow", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
