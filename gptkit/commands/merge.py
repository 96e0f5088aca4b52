"""`gptkit merge`: a LoRA run's base with its adapters merged into the weights, written as a plain checkpoint."""

from pathlib import Path

from gptkit.options import MergeOptions


def merge(options: MergeOptions) -> Path:
    """Write a run's base + adapters (merged: W + alpha / rank * B A, in float32) as a checkpoint in
    options.out_path; the weights keep the dtype the base stores them in."""
    import torch
    from rich.console import Console

    from gptkit.checkpoint.adapters import lora_settings
    from gptkit.checkpoint.folder import load_checkpoint, read_metadata, save_checkpoint
    from gptkit.checkpoint.locate import stored_float_dtype

    run, out = options.run, options.out_path
    settings, base = lora_settings(run)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    with console.status(f"merging {run}"):
        model = load_checkpoint(run).to(getattr(torch, stored_float_dtype(run)))
        source = read_metadata(run)
        metadata = {k: v for k, v in source.items() if k not in ("gptkit_version", "created", "torch_version")}
        metadata["lora"] = {
            "merged_from": str(Path(run).resolve()),
            "base": base,
            "rank": settings.rank,
            "alpha": settings.alpha,
            "targets": list(settings.targets),
        }
        save_checkpoint(model, out, metadata)
    console.print(f"wrote {out}: {base} with the rank-{settings.rank} adapters of {run} merged in")
    return out
