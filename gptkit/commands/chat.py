"""`gptkit chat`: a conversation with a checkpoint in the terminal, replies streamed as they come. With standard
input not a terminal, each line is one user message and each reply is printed whole on its own line, so scripts and
tests can drive it."""

import sys

from rich.console import Console

from gptkit.errors import GptkitError

COMMANDS_HELP = "/reset starts a new conversation, /exit (or Ctrl-D) ends it"


def read_messages(interactive: bool, console: Console):
    """The user's messages: typed at a prompt with line editing (readline), or the lines of standard input."""
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    try:
        import readline  # noqa: F401  (input() then edits the line and keeps a history)
    except ImportError:  # not on every platform (Windows)
        pass
    while True:
        try:
            yield input("you> ")
        except EOFError:
            console.print()
            return


def chat_template_of(ckpt, console: Console) -> dict:
    """The template the checkpoint was fine-tuned with (its gptkit.json), else the default, said once."""
    from gptkit.checkpoint.folder import read_metadata
    from gptkit.inference.chat_template import DEFAULT_TEMPLATE, recorded_template

    metadata = read_metadata(ckpt)
    if metadata.get("chat_template") is None:
        console.print(
            f"[dim]{ckpt} records no chat template (it was not fine-tuned on conversations by gptkit): using the "
            "default, 'User: ... / Assistant: ...'[/dim]",
            highlight=False,
        )
        return DEFAULT_TEMPLATE
    return recorded_template(metadata, ckpt)


def chat(opts):
    """`gptkit chat`: talk with opts.ckpt (opts checked itself when it was made)."""
    import torch

    from gptkit.checkpoint.locate import checkpoint_or_latest
    from gptkit.inference.conversation import Conversation, reply_room, stream_reply
    from gptkit.inference.decode import load_for_decoding
    from gptkit.inference.sampling import Sampling
    from gptkit.machine.runtime import pick_device, pick_dtype

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    ckpt = checkpoint_or_latest(opts.ckpt, "CKPT")
    template = chat_template_of(ckpt, console)
    device = pick_device(opts.device)
    model = load_for_decoding(ckpt, device, pick_dtype(opts.dtype, device), opts.quantize, opts.compile)
    generator = None if opts.seed is None else torch.Generator(device).manual_seed(opts.seed)
    sampling = Sampling(opts.temperature, opts.top_k or None, opts.top_p, generator)
    conversation = Conversation(template, opts.system)
    context, room = model.config.block_size, reply_room(model.config.block_size, opts.max_new_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[dim]chatting with {ckpt} ({COMMANDS_HELP})[/dim]")
    for message in read_messages(interactive, console):
        command = message.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            conversation.reset()
            console.print("[dim](a new conversation)[/dim]")
            continue
        if not command:
            continue
        conversation.ask(message)
        dropped_before = conversation.dropped
        try:
            prompt = conversation.prompt(context, room)
        except GptkitError as e:
            conversation.turns.pop()
            console.print(f"[red]{e}[/red]")
            continue
        if conversation.dropped and not dropped_before:
            console.print(
                f"[dim](the conversation outgrew the model's context of {context:,} tokens: its oldest turns are left "
                "out from here on)[/dim]"
            )
        conversation.answer(print_reply(stream_reply(model, prompt, template, sampling, room), interactive))


def print_reply(pieces, interactive: bool) -> str:
    """Print a reply's pieces as they come, then a newline; Ctrl-C stops it where it is. The reply's text."""
    text = ""
    if interactive:
        sys.stdout.write("model> ")
    try:
        for piece in pieces:
            text += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return text
