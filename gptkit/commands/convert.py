"""`gptkit convert`: a nanoGPT or build-nanogpt checkpoint (.pt, read safely by nanogpt.py) written once as a gptkit
checkpoint folder, which transformers opens too."""

from pathlib import Path

from gptkit.options import ConvertOptions


def convert(options: ConvertOptions) -> Path:
    """`gptkit convert`: write options.src (nanoGPT's ckpt.pt, build-nanogpt's model_XXXXX.pt) as a checkpoint folder
    options.out_path, all at once: nothing is written unless it reads whole."""
    from rich.console import Console

    from gptkit.checkpoint.folder import load_checkpoint, save_checkpoint
    from gptkit.checkpoint.nanogpt import read_nanogpt_file
    from gptkit.units import human_count

    src, out = options.src, options.out_path
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    with console.status(f"converting {src}"):
        original = read_nanogpt_file(src)
        model = load_checkpoint(src, nanogpt_file=original)
        source = {
            "file": str(Path(src).resolve()),
            "format": original.format,
            "step": original.step,
            "val_loss": original.val_loss,
            "activation": original.config.activation,
            "vocab_size": original.config.vocab_size,
        }
        if not original.bias:
            source["bias"] = "none in the source (bias=False): zeros here, which compute the same"
        metadata = {"converted_from": source} | ({"step": original.step} if original.step is not None else {})
        save_checkpoint(model, out, metadata)
    c = original.config
    recorded = (f", step {original.step}" if original.step is not None else "") + (
        f", val loss {original.val_loss:.4f}" if original.val_loss is not None else ""
    )
    console.print(
        f"wrote {out}: {original.format}'s {human_count(model.num_params())}-parameter model ({c.n_layer} layers, "
        f"{c.n_head} heads, {c.n_embd} wide, context {c.block_size}, vocabulary {c.vocab_size}){recorded} | "
        f"sample it: gptkit sample --ckpt {out}"
    )
    return out
