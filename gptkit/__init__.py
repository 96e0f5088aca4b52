"""gptkit: train, sample, evaluate and inspect GPT-2 class language models from the command line."""

__version__ = "0.1.0"
