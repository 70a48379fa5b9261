"""Perplexity: rolling windows as lm-eval cuts them, WikiText's pages and detokenizer, and the metrics."""

from __future__ import annotations

import re

import pytest
import torch

from lmforge.eval.loglik import LogLikelihood
from lmforge.eval.perplexity import document_logliks, rolling_windows, wikitext_detokenize, wikitext_documents
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def test_rolling_windows_match_lm_eval():
    # 34 tokens, windows of 10, context_len 1: disjoint windows; the last keeps a full window of context
    windows = list(rolling_windows(list(range(34)), prefix=-100, max_len=10))
    assert windows == [
        ([-100], list(range(10))),
        ([9], list(range(10, 20))),
        ([19], list(range(20, 30))),
        (list(range(23, 30)), list(range(30, 34))),
    ]


@pytest.mark.parametrize(
    "n, max_len, stride", [(1, 4, None), (37, 8, None), (37, 8, 3), (50, 16, 1), (5, 16, 4)]
)
def test_rolling_windows_predict_every_token_once_within_the_window(n, max_len, stride):
    tokens = list(range(100, 100 + n))
    predicted = []
    for ctx, cont in rolling_windows(tokens, -1, max_len, stride):
        assert len(ctx) + len(cont) - 1 <= max_len  # the model's input fits
        whole = ([-1] + tokens)[: tokens.index(cont[0]) + 1]
        assert ctx == whole[-len(ctx) :]  # the context is what comes right before
        predicted += cont
    assert predicted == tokens
    with pytest.raises(ValueError, match="stride"):
        list(rolling_windows(tokens, -1, max_len, max_len + 1))


def test_document_logliks_equal_one_forward_pass():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(dim=32, n_heads=4, n_layers=2, vocab_size=64, ffn_dim=48, max_seq_len=128)
    )
    model.init_weights(0.2).eval()

    class Tok:  # bytes as tokens, 0 the BOS
        bos_id, eos_id = 0, None

        def encode(self, text):
            return [b % 63 + 1 for b in text.encode()]

    texts = ["the quick brown fox jumps over the lazy dog", "hello"]
    (lp, n), _ = document_logliks(LogLikelihood(model), Tok(), texts)
    ids = [0] + Tok().encode(texts[0])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], -1)
    assert n == len(ids) - 1
    assert lp == pytest.approx(sum(logp[i, t].item() for i, t in enumerate(ids[1:])), abs=1e-4)
    # a window shorter than the text: more windows, each token still scored once, with less context
    (lp_short, n_short), _ = document_logliks(LogLikelihood(model, max_len=8), Tok(), texts)
    assert n_short == n and lp_short != pytest.approx(lp, abs=1e-6)


def test_wikitext_pages_and_detokenizer(data):
    docs = wikitext_documents(data / "text/wikitext2_raw/wiki.test.raw")
    assert len(docs) == 62  # lm-eval's wikitext test split: 62 articles
    assert docs[0].startswith(" = Robert Boulter = \n")
    assert "\r" not in docs[0]
    assert not any(" = = " in d.split("\n")[0] for d in docs)  # a page starts at a top-level heading
    assert wikitext_detokenize("a guest @-@ starring role , in 2000 @,@ 000 . ( film )") == (
        "a guest-starring role, in 2000,000. (film)"
    )
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    assert 240_000 < words < 260_000  # the word count perplexity divides by (WikiText-2 test: ~245k)
