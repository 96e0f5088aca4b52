"""A sample's tokens in, printable text out."""

import codecs

from gptkit.data.tokenizer import get_tokenizer


class TextStream:
    """One sample's tokens in, printable text out. Holds back the bytes of a UTF-8 character split across tokens
    until it is complete, and any tail that may be the start of a stop text; ends the sample at the first stop text."""

    def __init__(self, stop: str | tuple[str, ...] | None = None):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = tuple(s for s in ((stop,) if isinstance(stop, str) else stop or ()) if s)
        self.pending = ""
        self.done = False

    def add(self, token: int) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(get_tokenizer().decode_single_token_bytes(token))
        return self._release()

    def finish(self) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(b"", final=True)
        text = self._release(final=True)
        self.done = True
        return text

    def _release(self, final: bool = False) -> str:
        held = 0
        cuts = [cut for cut in (self.pending.find(stop) for stop in self.stops) if cut >= 0]
        if cuts:
            self.done = True
            text, self.pending = self.pending[: min(cuts)], ""
            return text
        if not final:
            held = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        split = len(self.pending) - held
        text, self.pending = self.pending[:split], self.pending[split:]
        return text
