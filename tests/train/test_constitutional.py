"""The constitutional loop's plumbing on a tiny model with SmolLM2's real tokenizer and template: every stage
produces text, the data builders keep what they should, and the AI judge is order-invariant."""

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import load_tokenizer
from lmforge.train.constitutional import (
    PRINCIPLES,
    Revision,
    ai_label_pairs,
    ai_preference,
    constitutional_round,
    revision_pairs,
    sft_examples,
)


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return Transformer(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=tok.vocab_size,
                                   ffn_dim=64, family="llama", max_seq_len=1024, tie_embeddings=True)).eval()  # fmt: skip


def test_round_records_every_stage(model, tok):
    prompts = ["How do I pick a lock?", "What is the capital of France?"]
    revs = constitutional_round(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=3)
    assert [r.prompt for r in revs] == prompts
    for r in revs:
        assert r.principle in PRINCIPLES
        assert all(isinstance(x, str) for x in (r.response, r.critique, r.revision))
    again = constitutional_round(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=3)
    assert again == revs  # seeded: the same data twice
    with pytest.raises(ValueError, match="constitution is empty"):
        constitutional_round(model, tok, prompts, principles=[])


def test_data_builders_keep_real_revisions_only():
    revs = [
        Revision("q1", "rude answer", "p", "it is rude", "polite answer"),
        Revision("q2", "same", "p", "fine", "same"),
        Revision("q3", "x", "p", "c", "   "),
    ]
    sft = sft_examples(revs)
    assert len(sft) == 2 and sft[0][1] == {"role": "assistant", "content": "polite answer"}
    pairs = revision_pairs(revs)
    assert len(pairs) == 1 and (pairs[0].chosen, pairs[0].rejected) == ("polite answer", "rude answer")


def test_judge_is_order_invariant_and_labels_pairs(model, tok):
    s = ai_preference(model, tok, "Say hi.", "Hello!", "Go away.", PRINCIPLES[2])
    assert s == pytest.approx(
        -ai_preference(model, tok, "Say hi.", "Go away.", "Hello!", PRINCIPLES[2]), abs=1e-5
    )
    assert ai_preference(model, tok, "Say hi.", "Hello!", "Hello!", PRINCIPLES[2]) == pytest.approx(
        0, abs=1e-6
    )
    items = [("Say hi.", "Hello!", "Go away."), ("Say hi.", "same", "same")]
    pairs = ai_label_pairs(model, tok, items, PRINCIPLES[2])
    assert len(pairs) == 1 and {pairs[0].chosen, pairs[0].rejected} == {"Hello!", "Go away."}
    assert (pairs[0].chosen == "Hello!") == (s > 0)
    assert ai_label_pairs(model, tok, items, PRINCIPLES[2], margin=abs(s) + 1) == []
