"""Supervised fine-tuning (SFT): chat data through the model's own template, loss on the assistant's tokens.

SFT (the first stage of InstructGPT, Ouyang et al. 2022) is next-token prediction on conversations. Two
things make it differ from pretraining:

- The loss covers only what the assistant says. The system prompt, the user's turns and tool outputs are
  context the model reads, not text it should learn to write; scoring them would teach it to write user
  questions. Each token carries a label: its id where the assistant wrote it, -100 (ignored by the
  cross-entropy) elsewhere.
- The text is the model's own chat template (ChatML for SmolLM2, ``<start_of_turn>`` for Gemma), so the
  fine-tuned model sees at training time exactly the layout ``apply_chat_template`` gives it at inference.

Which tokens are the assistant's? We ask the template itself: rendering ``messages[:i]`` with the
generation prompt and ``messages[:i+1]`` without it, the second extends the first by exactly turn i's
text and its end marker (``content<|im_end|>``). That works for any template whose renderings of a
conversation's prefixes are prefixes of each other; one that is not (a template that rewrites earlier
turns, or drops the reasoning of past turns) gets a clear error instead of silently wrong labels. The
segments are then tokenised one by one, as nanochat's ``render_conversation`` does, so each token is
wholly inside or outside a turn.

Packing (as in the pretraining loader): short examples share a row, each with its own ``segment_ids`` (so
attention never crosses from one example into another) and ``position_ids`` restarting at 0 (so each sees
the positions it would see alone). No compute goes to padding and no example sees another.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IGNORE = -100
Messages = list[dict[str, Any]]


@dataclass
class SFTExample:
    """One training sequence: token ids and their labels (the id where it is trained, -100 where not)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        return sum(lab != IGNORE for lab in self.labels)


def chat_segments(
    tokenizer, messages: Messages, chat_template: str | None = None, **kwargs: Any
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces; trained pieces are the assistant's turns.

    Raises ValueError when the conversation has no assistant turn, or when the template's renderings of
    the conversation's prefixes do not extend each other (then no split of the text into turns exists)."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant turn: there is nothing to train on")

    def render(msgs: Messages, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=generation_prompt,
                                             chat_template=chat_template, **kwargs)  # fmt: skip

    pieces: list[tuple[str, bool]] = []
    done = ""  # the text covered so far
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before, after = render(messages[:i], True), render(messages[: i + 1], False)
        for longer, shorter, what in ((before, done, f"turns 0..{i - 1} + generation prompt"),
                                      (after, before, f"turns 0..{i}")):  # fmt: skip
            if not longer.startswith(shorter):
                raise ValueError(
                    f"the chat template cannot mark assistant tokens: rendering {what} does not extend the "
                    "rendering of the turns before it (the template rewrites earlier turns). Use a template "
                    "whose output for a conversation's prefix is a prefix of its output (pass chat_template=...)"
                )
        turn = after[len(before) :]
        body = turn.rstrip()  # "content<|im_end|>" is trained; the newline after the end marker is layout
        pieces += [(before[len(done) :], False), (body, True), (turn[len(body) :], False)]
        done = after
    full = render(messages, False)
    if not full.startswith(done):
        raise ValueError("the chat template cannot mark assistant tokens: the full rendering does not extend "
                         "the rendering of its last assistant turn")  # fmt: skip
    pieces.append((full[len(done) :], False))
    return [(t, trained) for t, trained in pieces if t]


def tokenize_chat(tokenizer, messages: Messages, max_length: int | None = None,
                  chat_template: str | None = None, **kwargs: Any) -> SFTExample:  # fmt: skip
    """A conversation → ids with labels on the assistant's tokens only; cut to max_length tokens."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in chat_segments(tokenizer, messages, chat_template, **kwargs):
        piece = tokenizer.encode(text)
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return SFTExample(ids, labels)


def text_example(tokenizer, text: str, max_length: int | None = None) -> SFTExample:
    """Plain text with every token trained: pretraining data mixed into SFT against forgetting."""
    ids = tokenizer.encode(text)
    eos = tokenizer.eos_id
    if eos is not None:
        ids = ids + [eos]
    ids = ids[:max_length] if max_length else ids
    return SFTExample(ids, list(ids))


def tokenize_all(tokenizer, conversations: Sequence[Messages], max_length: int | None = None,
                 chat_template: str | None = None, **kwargs: Any) -> list[SFTExample]:  # fmt: skip
    """``tokenize_chat`` for many conversations; an error names the conversation it is about."""
    out = []
    for i, msgs in enumerate(conversations):
        try:
            out.append(tokenize_chat(tokenizer, msgs, max_length, chat_template, **kwargs))
        except ValueError as e:
            raise ValueError(f"conversation {i}: {e}") from None
    return out


def mix(
    examples: Sequence[SFTExample], extra: Sequence[SFTExample], fraction: float, seed: int = 0
) -> list[SFTExample]:
    """``examples`` plus enough of ``extra`` (e.g. pretraining text) to make up ``fraction`` of the result."""
    if not 0 <= fraction < 1:
        raise ValueError(f"mix fraction must be in [0, 1), got {fraction}")
    want = round(len(examples) * fraction / (1 - fraction))
    if want > len(extra):
        raise ValueError(f"mixing {fraction:.0%} needs {want} extra examples, only {len(extra)} were given")
    pick = random.Random(seed).sample(range(len(extra)), want)
    return [*examples, *(extra[i] for i in pick)]


class SFTLoader:
    """Batches of SFT examples for the Trainer: ``next_batch()`` → (x, y, segment_ids, position_ids), (B, T).

    pack=True: examples are packed into rows by best fit (the largest that still fits goes first) from a
    buffer of the shuffled order (an epoch's examples all leave before the next epoch's come in); pack=False: one example per row. y is the label of the next token
    (-100 where the next token is not trained, is padding or starts another example). Examples longer
    than seq_len + 1 are cut. A fresh order each epoch, seeded; ``state_dict`` resumes exactly.
    """

    def __init__(self, examples: Sequence[SFTExample], batch_size: int, seq_len: int, seed: int = 0,
                 pack: bool = True, pad_id: int = 0, buffer_size: int = 256) -> None:  # fmt: skip
        if seq_len < 1 or batch_size < 1 or buffer_size < 1:
            raise ValueError("batch_size, seq_len and buffer_size must be positive")
        self.examples = [e for e in examples if e.trained > 0 and len(e) > 1]
        if not self.examples:
            raise ValueError("no example has a trained token (every label is -100)")
        self.batch_size, self.seq_len, self.seed, self.pack = batch_size, seq_len, seed, pack
        self.pad_id, self.buffer_size = pad_id, buffer_size if pack else 1
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)
        self._buffer: list[tuple[int, int]] = []  # (length, example index), sorted

    @property
    def truncated(self) -> int:
        """How many examples are longer than a row and lose their end."""
        return sum(len(e) > self.seq_len + 1 for e in self.examples)

    def _permutation(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)).tolist()

    def _fill(self) -> None:
        while len(self._buffer) < self.buffer_size:
            if self.cursor == len(self._order):
                if self._buffer:  # finish this epoch's examples before the next epoch's come in
                    return
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            i = self._order[self.cursor]
            self.cursor += 1
            bisect.insort(self._buffer, (min(len(self.examples[i]), self.seq_len + 1), i))

    def _row(self) -> list[int]:
        self._fill()
        space, row = self.seq_len + 1, []
        while self._buffer:
            j = bisect.bisect_right(self._buffer, (space, len(self.examples))) - 1  # the largest that fits
            if j < 0 or (row and not self.pack):
                break
            length, i = self._buffer.pop(j)
            row.append(i)
            space -= length
        return row

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        B, T = self.batch_size, self.seq_len
        ids = np.full((B, T + 1), self.pad_id, dtype=np.int64)
        labels = np.full((B, T + 1), IGNORE, dtype=np.int64)
        segments = np.full((B, T + 1), -1, dtype=np.int64)
        positions = np.zeros((B, T + 1), dtype=np.int64)
        for b in range(B):
            at = 0
            for k, i in enumerate(self._row()):
                e = self.examples[i]
                n = min(len(e), T + 1 - at)
                ids[b, at : at + n] = e.input_ids[:n]
                labels[b, at : at + n] = e.labels[:n]
                segments[b, at : at + n] = k
                positions[b, at : at + n] = np.arange(n)
                at += n
        x = torch.from_numpy(ids[:, :-1].copy())
        y = torch.from_numpy(labels[:, 1:].copy())
        # the target of position t is token t+1 only inside one example
        y[torch.from_numpy(segments[:, 1:] != segments[:, :-1])] = IGNORE
        return x, y, torch.from_numpy(segments[:, :-1].copy()), torch.from_numpy(positions[:, :-1].copy())

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"loader": "sft", "epoch": self.epoch, "cursor": self.cursor,
                "buffer": torch.tensor([i for _, i in self._buffer], dtype=torch.int64)}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("loader") != "sft":
            raise ValueError(f"a {state.get('loader')!r} loader's state cannot restore an SFT loader")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)
        self._buffer = sorted(
            (min(len(self.examples[i]), self.seq_len + 1), i) for i in state["buffer"].tolist()
        )
