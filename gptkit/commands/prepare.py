"""`gptkit prepare`: DATA tokenized once into token shards (data.prepare does it), with its progress and a summary."""

from rich.console import Console

from gptkit.data.prepare import default_out
from gptkit.data.prepare import prepare as prepare_tokens
from gptkit.options import PrepareOptions
from gptkit.progress import PrepareProgress


def prepare(options: PrepareOptions):
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    progress = PrepareProgress(enabled=console.is_terminal)
    try:
        result = prepare_tokens(
            options.data, options.out or default_out(options.data), options.val_fraction, options.shard_tokens, progress
        )
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
