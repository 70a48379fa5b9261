"""Token ids → text deltas for one generated sequence, UTF-8 safe, cut at OpenAI-style stop strings.

Two things make streaming text harder than joining decoded tokens:
  - a token can end in the middle of a UTF-8 character (emoji, CJK, accents split by byte-level BPE):
    an incremental decoder keeps the partial bytes until the character is whole (as `text_deltas` does);
  - `stop` strings are matched on text, not tokens, and may span several tokens: `StopText` (the same
    one `lmforge.stream` uses) holds back text that could still become a stop string until the next
    token decides; a stop string itself is never sent, and the text ends right before it, as OpenAI's does.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from lmforge.infer.generate import StopText


class TextStream:
    """Feed token ids one at a time; get back the text that is safe to send now."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cut = StopText(stop)
        self.output = ""  # the text sent so far: the completion, ending before a stop string

    @property
    def stopped(self) -> bool:
        """A stop string was found: the sequence is over."""
        return self._cut.stopped

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that can be sent (possibly "")."""
        if self.stopped:
            return ""
        return self._sent(self._cut.push(self._decoder.decode(self.tokenizer.decode_bytes([token_id]))))

    def finish(self) -> str:
        """The sequence ended (end token or length): flush partial bytes and any held-back text."""
        if self.stopped:
            return ""
        out = self._cut.push(self._decoder.decode(b"", final=True))
        return self._sent(out + self._cut.flush())

    def _sent(self, delta: str) -> str:
        self.output += delta
        return delta
