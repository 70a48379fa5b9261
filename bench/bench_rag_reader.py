"""RAG on BoolQ with a trained yes/no head on SmolLM2-135M-Instruct (a linear probe, lmforge.train.probe).

Zero-shot, SmolLM2-135M's log p(yes) − log p(no) carries almost no information about BoolQ answers, with
or without the passage (bench/probe_boolq_reader.py, docs/rag.md). This bench asks the next question:
does the frozen model's representation of "sources + question" encode the answer, so that a reader
whose only trained part is one output row (D + 1 numbers) can use retrieval?

For the first --limit BoolQ questions, the same three chat prompts as bench/bench_rag.py (closed-book,
RAG with the hybrid top --k passages, oracle passage) go through the model once each. The final-norm
hidden state of the last prompt token is the feature. Then, per condition:
- zero-shot: log p(yes) − log p(no) from the same hidden state (the model's own unembedding);
- probe: logistic regression, 5-fold cross-validated with folds grouped by passage (a passage's
  questions are never split between train and test) and L2 chosen inside each training split only.

The table gives out-of-fold accuracy, AUC, and the paired randomisation-test p-value of RAG vs
closed-book on per-question correctness. Features are cached in --cache, so a rerun with other fitting
options takes seconds.

    python bench/bench_rag_reader.py                 # 1,500 questions, ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_rag import CLOSED, WITH_SOURCES, read_boolq  # noqa: E402
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import load_model, load_tokenizer  # noqa: E402
from lmforge.retrieval.bm25 import BM25  # noqa: E402
from lmforge.retrieval.dense import DenseIndex  # noqa: E402
from lmforge.retrieval.fusion import rrf  # noqa: E402
from lmforge.retrieval.metrics import randomization_test  # noqa: E402
from lmforge.retrieval.rerank import LLMReranker  # noqa: E402
from lmforge.train.probe import cross_val_scores, group_folds, last_token_features  # noqa: E402

CONDITIONS = ("closed-book", "RAG", "oracle passage")


def auc(s: np.ndarray, y: np.ndarray) -> float:
    """Probability that a random "yes" question scores above a random "no" one (ties count half)."""
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks of ties
        tie = s == v
        ranks[tie] = ranks[tie].mean()
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def prompts(limit: int, k: int) -> tuple[list[dict], dict[str, list[str]], float]:
    rows = read_boolq(data_dir() / "eval" / "suite" / "boolq.jsonl")
    passages = list(dict.fromkeys(r["passage"] for r in rows))
    ids = [str(i) for i in range(len(passages))]
    pid = dict(zip(passages, ids))
    bm = BM25().index(passages, ids)
    enc = load_model("all-minilm-l6-v2")
    dense = DenseIndex(384).add(enc.encode(passages, progress=True).numpy(), ids)
    qs = rows[:limit] if limit > 0 else rows
    text = [r["question"] for r in qs]
    hyb = [
        rrf([a, b], top=k)
        for a, b in zip(bm.search_batch(text, 10), dense.search(enc.encode(text).numpy(), 10))
    ]
    recall = sum(pid[r["passage"]] in [d for d, _ in h] for r, h in zip(qs, hyb)) / len(qs)
    out = {c: [] for c in CONDITIONS}
    for r, h in zip(qs, hyb):
        top = "\n\n".join(f"[{i}] {passages[int(d)]}" for i, (d, _) in enumerate(h, 1))
        out["closed-book"].append(CLOSED.format(q=r["question"]))
        out["RAG"].append(WITH_SOURCES.format(sources=top, q=r["question"]))
        out["oracle passage"].append(WITH_SOURCES.format(sources=f"[1] {r['passage']}", q=r["question"]))
    return qs, out, recall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=1500, help="questions (0: all 3,270)")
    ap.add_argument("-k", type=int, default=2, help="retrieved passages in the RAG prompt")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache", default="bench/out/boolq_reader_features.pt")
    ap.add_argument("--out", default="bench/out/rag_reader.json")
    args = ap.parse_args()
    print(load_line("start"))
    qs, texts, recall = prompts(args.limit, args.k)
    chat = load_model("smollm2-135m-instruct")
    judge = LLMReranker(chat, load_tokenizer("smollm2-135m-instruct"))
    cache = Path(args.cache)
    key = {"limit": args.limit, "k": args.k}
    feats = None
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == json.dumps(key):
            feats = saved["features"]
    t0 = time.perf_counter()
    if feats is None:
        feats = {
            c: last_token_features(chat, [judge.ids(t) for t in texts[c]], progress=True) for c in CONDITIONS
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": json.dumps(key), "features": feats}, cache)
    feature_s = time.perf_counter() - t0

    y = torch.tensor([r["yes"] for r in qs], dtype=torch.float32)
    yb = y.numpy().astype(bool)
    folds = group_folds([r["passage"] for r in qs], args.folds)
    unembed = chat.lm_head.weight if chat.lm_head is not None else chat.embed.weight  # (V, D)
    rows, correct, result = [], {}, {}
    for c in CONDITIONS:
        with torch.inference_mode():
            lp = torch.log_softmax(feats[c] @ unembed.float().T, -1)  # (N, V)
            zero = (torch.logsumexp(lp[:, judge.yes], -1) - torch.logsumexp(lp[:, judge.no], -1)).numpy()
        probe, l2 = cross_val_scores(feats[c], y, folds)
        for name, s in ((f"{c}, zero-shot", zero), (f"{c}, probe", probe)):
            hit = (s > 0) == yb
            correct[name] = hit.astype(float)
            acc = hit.mean()
            rows.append(
                [
                    name,
                    f"{100 * acc:.1f}",
                    f"{100 * math.sqrt(acc * (1 - acc) / len(hit)):.1f}",
                    f"{auc(s, yb):.3f}",
                ]
            )
            result[name] = {"accuracy": float(acc), "auc": auc(s, yb)}
        result[f"{c}, probe"]["l2"] = l2
    majority = max(yb.mean(), 1 - yb.mean())
    rows.append(["majority class", f"{100 * majority:.1f}", "", "0.500"])

    def p(a: str, b: str) -> float:
        return randomization_test(dict(enumerate(correct[a])), dict(enumerate(correct[b])))

    tests = [
        ("RAG probe vs closed-book probe", p("RAG, probe", "closed-book, probe")),
        ("oracle probe vs closed-book probe", p("oracle passage, probe", "closed-book, probe")),
    ]
    print(f"\nBoolQ, first {len(qs)} questions, SmolLM2-135M-Instruct (GGUF Q4_1), hybrid top {args.k}")
    print(f"gold passage in the top {args.k}: {100 * recall:.1f}%; {args.folds}-fold CV grouped by passage\n")
    print(md_table(["reader", "accuracy %", "± stderr", "AUC"], rows))
    print()
    print(md_table(["paired randomisation test", "p"], [[n, f"{v:.4f}"] for n, v in tests]))
    print(f"\nfeatures: {feature_s:.0f} s ({3 * len(qs)} prompts)")
    print(load_line("end"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "n": len(qs),
                "k": args.k,
                "recall": recall,
                "majority": majority,
                "readers": result,
                "p": dict(tests),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
