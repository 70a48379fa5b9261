"""Token ids → text deltas for one generated sequence, UTF-8 safe, cut at OpenAI-style stop strings.

Two things make streaming text harder than joining decoded tokens:
  - a token can end in the middle of a UTF-8 character (emoji, CJK, accents split by byte-level BPE):
    an incremental decoder keeps the partial bytes until the character is whole (as `text_deltas` does);
  - `stop` strings are matched on text, not tokens, and may span several tokens. Text that could still
    become the start of a stop string is held back until the next token decides; a stop string itself is
    never sent, and the text ends right before it (what OpenAI's API does).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed token ids one at a time; get back the text that is safe to send now."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far (may run past a stop string)
        self.sent = 0  # characters of self.text already handed out
        self.stopped = False  # a stop string was found: the sequence is over

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that can be sent (possibly "")."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self.tokenizer.decode_bytes([token_id]))
        return self._release(final=False)

    def finish(self) -> str:
        """The sequence ended (end token or length): flush partial bytes and any held-back text."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    @property
    def output(self) -> str:
        """The text sent so far: the completion, ending before a stop string."""
        return self.text[: self.sent]

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        # Text before `sent` never holds the start of a stop string (it would have been held back), so a
        # match can only begin at `sent` or later.
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            end = min(hits)
            self.stopped = True
        elif not final:
            end -= self._held_back()
        delta = self.text[self.sent : end]
        self.sent = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest unsent suffix that is a proper prefix of some stop string."""
        tail = self.text[self.sent :]
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:k]):
                    best = k
                    break
        return best
