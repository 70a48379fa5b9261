"""Contrastive tuning and reranking: the losses by hand, batches without false negatives, a short real
training run that lowers the loss, and fine-tuned models that transformers / sentence-transformers load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge import load_model
from lmforge.retrieval import contrastive as C
from lmforge.retrieval.bm25 import BM25
from lmforge.retrieval.rerank import CrossEncoder, LLMReranker, train_cross_encoder


def test_info_nce_and_triplet_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    n = torch.tensor([[1.0, 0.0]])
    tau = 0.5
    logits = [[0.6 / tau, 0.0, 1.0 / tau], [0.8 / tau, 1.0 / tau, 0.0]]
    want = -np.mean([logits[i][i] - math.log(sum(math.exp(x) for x in logits[i])) for i in range(2)])
    assert float(C.info_nce(q, p, n, tau)) == pytest.approx(want, rel=1e-6)
    assert float(C.triplet(q[:1], p[:1], n, margin=0.2)) == pytest.approx(max(0, 0.2 - 0.6 + 1.0))


def test_batches_hold_no_duplicate_texts_nor_false_negatives():
    ex = [C.Example(f"q{i % 5}", f"p{i}", None, f"q{i % 5}", f"p{i}") for i in range(40)]
    related = {f"q{k}": {f"p{i}" for i in range(40) if i % 5 == k} | {"p0"} for k in range(5)}
    bs = C.batches(ex, 4, seed=1, related=related)
    assert sum(len(b) for b in bs) >= 35  # almost every example is placed
    for b in bs:
        assert len({e.query for e in b}) == len(b) and len({e.positive for e in b}) == len(b)
        for e in b:
            assert not any(e.pid in related[x.qid] for x in b if x is not e)


def test_hard_negatives_are_bm25_ranked_and_never_judged_relevant():
    docs = {
        "d1": "supersonic flow over a wedge",
        "d2": "supersonic flow shock wave angle",
        "d3": "heat in slabs",
        "d4": "shock wave in supersonic nozzle flow",
    }
    bm = BM25().index(list(docs.values()), list(docs))
    ex = C.pairs_from_qrels({"q": "supersonic shock flow"}, docs, {"q": {"d2": 3, "d4": 0}})
    assert [e.pid for e in ex] == ["d2"]
    mined = C.mine_hard_negatives(ex, bm, docs, {"q": {"d2": 3}})
    assert mined[0].negative in {docs["d1"], docs["d4"]}


def test_contrastive_training_lowers_the_loss_and_saves_a_sentence_transformers_folder(tmp_path, data):
    from sentence_transformers import SentenceTransformer

    from lmforge.retrieval.collections import load_cranfield

    torch.manual_seed(0)
    c = load_cranfield(data / "retrieval" / "cranfield")
    train_q = {q: t for q, t in c.queries.items() if int(q) <= 12}
    ex = C.pairs_from_qrels(train_q, c.docs, c.qrels, min_grade=3)[:32]
    enc = load_model("all-minilm-l6-v2")
    enc.max_seq_length = 64  # short texts keep the test fast; the loss behaves the same
    with torch.no_grad():
        before = [
            float(C.info_nce(enc.embed_texts([e.query for e in b]), enc.embed_texts([e.positive for e in b])))
            for b in C.batches(ex, 16, seed=0)
        ]
    C.train_embedder(enc, ex, epochs=3, batch_size=16, lr=5e-5, progress=False)
    with torch.no_grad():
        after = [
            float(C.info_nce(enc.embed_texts([e.query for e in b]), enc.embed_texts([e.positive for e in b])))
            for b in C.batches(ex, 16, seed=0)
        ]
    assert np.mean(after) < 0.8 * np.mean(before)
    from lmforge.model.bert import save_bert_folder

    out = save_bert_folder(enc, tmp_path / "tuned")
    texts = [ex[0].query, ex[0].positive]
    ref = SentenceTransformer(str(out), device="cpu")
    ref.max_seq_length = 64
    np.testing.assert_allclose(
        ref.encode(texts, normalize_embeddings=True), enc.encode(texts).numpy(), atol=2e-5
    )
    back = load_model(out)
    assert back.max_seq_length == 256  # the folder keeps sentence_bert_config.json
    back.max_seq_length = 64
    np.testing.assert_allclose(back.encode(texts).numpy(), enc.encode(texts).numpy(), atol=1e-6)


def test_cross_encoder_trains_and_loads_in_transformers(tmp_path, minilm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    ce = CrossEncoder.from_folder(minilm_dir, max_length=64)
    groups = [
        ("shock waves", "shock waves form in supersonic flow", ["heat conduction in slabs", "wing flutter"]),
        ("heat conduction", "heat conduction in composite slabs", ["shock waves form", "boundary layers"]),
    ]
    losses = train_cross_encoder(ce, groups * 4, epochs=2, groups_per_step=2, lr=1e-4, progress=False)
    assert losses[-1] < losses[0]
    hits = [("a", 0.0), ("b", 0.0)]
    docs = {"a": "wing flutter at low speed", "b": "shock waves form in supersonic flow"}
    assert ce.rerank("shock waves", hits, docs)[0][0] == "b"
    out = ce.save(tmp_path / "ce")
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    q, ps = "shock waves", [docs["a"], docs["b"]]
    with torch.no_grad():
        want = hf(
            **tok([q] * 2, ps, padding=True, truncation=True, max_length=64, return_tensors="pt")
        ).logits[:, 0]
    np.testing.assert_allclose(ce.score(q, ps), want.numpy(), atol=1e-4)
    back = CrossEncoder.from_folder(out, max_length=64)
    np.testing.assert_allclose(back.score(q, ps), ce.score(q, ps), atol=1e-6)


def test_llm_reranker_prefers_the_relevant_passage(smollm2_gguf):
    from lmforge import load_tokenizer

    model = load_model(smollm2_gguf)
    rr = LLMReranker(model, load_tokenizer(smollm2_gguf))
    s = rr.score(
        "What is the capital of France?",
        ["Paris is the capital and largest city of France.", "Photosynthesis converts light into sugar."],
    )
    assert s[0] > s[1]
    with pytest.raises(ValueError, match="no chat template"):
        rr.tok = type("T", (), {"chat_template": None, "encode": rr.tok.encode})()
        rr.prompt("q", "p")
