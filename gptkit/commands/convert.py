"""`gptkit convert`: a nanoGPT or build-nanogpt checkpoint (.pt, read safely by nanogpt.py) written once as a gptkit
checkpoint folder, which transformers opens too."""

from pathlib import Path


def convert_checkpoint(src: Path, out: Path | None = None, overwrite: bool = False) -> Path:
    """`gptkit convert`: write src (nanoGPT's ckpt.pt, build-nanogpt's model_XXXXX.pt) as a checkpoint folder out
    (default: src without its suffix, beside it), all at once: nothing is written unless src reads whole."""
    from rich.console import Console

    from gptkit.checkpoint.folder import load_checkpoint, save_checkpoint
    from gptkit.checkpoint.nanogpt import read_peer
    from gptkit.options import check_convert_command, default_converted_out
    from gptkit.units import human_count

    check_convert_command(src, out, overwrite)
    out = Path(out) if out is not None else default_converted_out(src)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    with console.status(f"converting {src}"):
        peer = read_peer(src)
        model = load_checkpoint(src, peer=peer)
        source = {
            "file": str(Path(src).resolve()),
            "format": peer.format,
            "step": peer.step,
            "val_loss": peer.val_loss,
            "activation": peer.config.activation,
            "vocab_size": peer.config.vocab_size,
        }
        if not peer.bias:
            source["bias"] = "none in the source (bias=False): zeros here, which compute the same"
        metadata = {"converted_from": source} | ({"step": peer.step} if peer.step is not None else {})
        save_checkpoint(model, out, metadata)
    c = peer.config
    recorded = (f", step {peer.step}" if peer.step is not None else "") + (
        f", val loss {peer.val_loss:.4f}" if peer.val_loss is not None else ""
    )
    console.print(
        f"wrote {out}: {peer.format}'s {human_count(model.num_params())}-parameter model ({c.n_layer} layers, "
        f"{c.n_head} heads, {c.n_embd} wide, context {c.block_size}, vocabulary {c.vocab_size}){recorded} | "
        f"sample it: gptkit sample --ckpt {out}"
    )
    return out
