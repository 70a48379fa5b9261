"""Log-likelihood scoring: prefix trees and packing change nothing, and the numbers equal transformers'."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.eval.loglik import Group, LogLikelihood, encode_pair, pack, truncate
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def reference(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Σ log p of the continuation from one plain forward pass over context + continuation."""
    ids = torch.tensor([context + continuation[:-1]])
    with torch.no_grad():
        out = model(ids)
    logits = out.logits if hasattr(out, "logits") else out  # transformers returns an output object
    logp = torch.log_softmax(logits[0].float(), -1)
    rows = logp[len(context) - 1 :]
    lp = sum(rows[j, t].item() for j, t in enumerate(continuation))
    greedy = all(rows[j].argmax().item() == t for j, t in enumerate(continuation))
    return lp, greedy


def random_groups(rng: random.Random, vocab: int, n: int) -> list[Group]:
    return [
        Group([rng.randrange(vocab) for _ in range(rng.randint(1, 20))],
              [[rng.randrange(vocab) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 4))])
        for _ in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "sliding"])
@pytest.mark.parametrize("row_len", [8, 64, 512])
def test_trees_and_packing_equal_one_request_at_a_time(family, row_len):
    torch.manual_seed(0)
    kw = dict(dim=32, n_heads=4, n_kv_heads=2, n_layers=3, vocab_size=40, ffn_dim=48, max_seq_len=64)
    if family == "sliding":  # Gemma 3's pattern: local layers with a short window, one global layer
        kw.update(sliding_window=6, layer_types=["sliding", "sliding", "full"])
    model = Transformer(ModelConfig(**kw)).init_weights(0.2).eval()
    groups = random_groups(random.Random(1), 40, 12)
    scored = LogLikelihood(model, row_len=row_len, rows_per_batch=3).score(groups)
    for g, res in zip(groups, scored):
        assert len(res) == len(g.continuations)
        for cont, s in zip(g.continuations, res):
            lp, greedy = reference(model, g.context, cont)
            assert s.logprob == pytest.approx(lp, abs=1e-4)
            assert s.greedy == greedy and s.n_tokens == len(cont)


def test_pack_fits_rows_and_keeps_every_group():
    sizes = [30, 5, 17, 64, 1, 12, 40]
    groups = [Group([0] * (n - 1), [[0]]) for n in sizes]
    rows = pack(groups, 64)
    assert sorted(i for r in rows for i in r) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in r) <= 64 for r in rows)
    assert len(rows) == 3  # 64 | 40 + 17 + 5 + 1 | 30 + 12


def test_truncate_keeps_the_end_of_the_context():
    g = truncate(Group(list(range(100)), [[1, 2, 3], [4]]), max_len=10)
    assert g.context == list(range(92, 100))  # 8 context + 3 continuation - 1 (never fed) = 10 inputs
    with pytest.raises(ValueError, match="longer than the model"):
        truncate(Group([1], [list(range(11))]), max_len=10)


def test_encode_pair_moves_the_space_and_tokenizes_in_running_text(smollm2_gguf):
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf)
    ctx, cont = encode_pair(tok, "Question: What is 2+2?\nAnswer: ", "four")
    assert ctx == tok.encode("Question: What is 2+2?\nAnswer:")
    assert tok.decode(cont) == " four"
    ctx, cont = encode_pair(tok, "", "Hello")
    assert ctx == [tok.bos_id] and cont == tok.encode("Hello")


def test_logliks_equal_transformers_on_smollm2(smollm2_gguf, data):
    """The bar of issue 6: on the same weights and requests, our log-likelihoods equal transformers' within
    1e-3 — real ARC-Easy questions, all choices of each scored as one prefix tree."""
    transformers = pytest.importorskip("transformers")
    import json

    import lmforge

    ours = lmforge.load_model(smollm2_gguf)
    tok = ours.tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    rows = [json.loads(line) for line in open(data / "eval/suite/arc_easy.jsonl", encoding="utf-8")][:6]
    groups = []
    for row in rows:
        pairs = [encode_pair(tok, row["query"] + "\nAnswer:", " " + c) for c in row["choices"]]
        groups.append(Group(pairs[0][0], [p[1] for p in pairs]))
    worst = 0.0
    for g, res in zip(groups, LogLikelihood(ours, row_len=256).score(groups)):
        for cont, s in zip(g.continuations, res):
            lp, greedy = reference(hf, g.context, cont)
            worst = max(worst, abs(s.logprob - lp))
            assert s.greedy == greedy
    assert worst <= 1e-3, worst


def test_only_causal_decoders_are_scored():
    model = Transformer(ModelConfig(dim=16, n_heads=2, n_layers=1, vocab_size=20, ffn_dim=8, causal=False))
    with pytest.raises(ValueError, match="causal decoder"):
        LogLikelihood(model)
