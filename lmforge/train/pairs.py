"""Preference pairs as tensors: prompt + chosen and prompt + rejected, through the model's chat template.

Both the reward model and DPO read a pair (x, y_w, y_l) the same way: each response is the assistant turn
after the prompt's conversation, tokenised by ``sft.tokenize_chat`` so that exactly the response's tokens
(and its end marker) are marked. A batch of B pairs is one (2B, T) tensor — the B chosen rows, then the
B rejected ones — right-padded: with causal attention, padding after a sequence cannot change anything
before it, so no attention mask is needed, and each row's last real token is where a reward is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmforge.data.chat import PreferencePair
from lmforge.train.sft import IGNORE, SFTExample, tokenize_chat


@dataclass
class TokenizedPair:
    chosen: SFTExample
    rejected: SFTExample


def tokenize_pair(tokenizer, pair: PreferencePair, max_length: int = 512) -> TokenizedPair:
    """A pair's two conversations, with labels on the response tokens; identical responses are an error
    (they carry no preference, and would train nothing while looking like data)."""
    if pair.chosen.strip() == pair.rejected.strip():
        raise ValueError("the chosen and rejected responses are identical: the pair states no preference")
    out = []
    for reply in (pair.chosen, pair.rejected):
        ex = tokenize_chat(tokenizer, [*pair.prompt, {"role": "assistant", "content": reply}])
        if len(ex) > max_length:  # keep the response: cut the prompt from the left
            cut = len(ex) - max_length
            if any(lab != IGNORE for lab in ex.labels[:cut]):
                cut = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
            ex = SFTExample(ex.input_ids[cut:][:max_length], ex.labels[cut:][:max_length])
        out.append(ex)
    return TokenizedPair(*out)


def tokenize_pairs(tokenizer, pairs: Sequence[PreferencePair], max_length: int = 512) -> list[TokenizedPair]:
    """``tokenize_pair`` for many; an error names the pair."""
    out = []
    for i, p in enumerate(pairs):
        try:
            out.append(tokenize_pair(tokenizer, p, max_length))
        except ValueError as e:
            raise ValueError(f"preference pair {i}: {e}") from None
    return out


def collate(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids (2B, T), response mask (2B, T) aligned with input_ids, last (2B,) index of each row's
    last real token. Rows 0..B-1 are the chosen responses, B..2B-1 the rejected ones."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r.input_ids)
        mask[i, : len(r)] = torch.tensor([lab != IGNORE for lab in r.labels])
    last = torch.tensor([len(r) - 1 for r in rows])
    return {"input_ids": ids, "response_mask": mask, "last": last}
