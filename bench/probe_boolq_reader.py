"""Can SmolLM2-135M-Instruct read a BoolQ passage? Four ways of asking, with and without the passage.

For the first --n BoolQ questions: closed-book, RAG (the BM25+dense RRF top 2) and the oracle passage,
each scored as
- chat: log p(yes) − log p(no) after bench_rag's chat prompt;
- raw: the same after lm-eval's "Passage: …\\nQuestion: …?\\nAnswer:" without the chat template;
- channel: log p(passage + question | "The answer is yes.") − the same given "no." (Min et al. 2022);
plus contextual calibration of chat/raw (Zhao et al. 2021: subtract the score of "N/A" inputs).
Reported: accuracy at 0, calibrated accuracy and the AUC of each score against the gold answer
(0.5 = the score carries no information).

    python bench/probe_boolq_reader.py --n 300      # ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_rag import CLOSED, WITH_SOURCES, read_boolq  # noqa: E402
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import load_model  # noqa: E402
from lmforge.retrieval.bm25 import BM25  # noqa: E402
from lmforge.retrieval.dense import DenseIndex  # noqa: E402
from lmforge.retrieval.fusion import rrf  # noqa: E402
from lmforge.retrieval.rerank import LLMReranker  # noqa: E402

RAW = "{ctx}Question: {q}?\nAnswer:"


def auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    print(load_line("start"))
    rows = read_boolq(data_dir() / "eval" / "suite" / "boolq.jsonl")[: args.n]
    allrows = read_boolq(data_dir() / "eval" / "suite" / "boolq.jsonl")
    passages = list(dict.fromkeys(r["passage"] for r in allrows))
    ids = [str(i) for i in range(len(passages))]
    bm = BM25().index(passages, ids)
    enc = load_model("all-minilm-l6-v2")
    dense = DenseIndex(384).add(enc.encode(passages).numpy(), ids)
    qs = [r["question"] for r in rows]
    hyb = [
        rrf([a, b], top=2) for a, b in zip(bm.search_batch(qs, 10), dense.search(enc.encode(qs).numpy(), 10))
    ]
    chat = load_model("smollm2-135m-instruct")
    judge = LLMReranker(chat, chat.tokenizer)
    tok, model = judge.tok, judge.model

    @torch.inference_mode()
    def loglik(prefix: str, cont: str) -> float:
        a, b = tok.encode(prefix), tok.encode(cont)
        lp = torch.log_softmax(model(torch.tensor([a + b]))[0].float(), -1)
        return float(lp[len(a) - 1 : len(a) + len(b) - 1].gather(1, torch.tensor(b)[:, None]).sum())

    scores = {f: {c: [] for c in ("closed", "rag", "oracle")} for f in ("chat", "raw", "channel")}
    for r, h in zip(rows, hyb):
        top = [passages[int(d)] for d, _ in h]
        ctxs = {"closed": None, "rag": top, "oracle": [r["passage"]]}
        for c, ps in ctxs.items():
            srcs = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(ps or [], 1))
            scores["chat"][c].append(
                judge.ask(
                    CLOSED.format(q=r["question"])
                    if ps is None
                    else WITH_SOURCES.format(sources=srcs, q=r["question"])
                )
            )
            ctx = "".join(f"Passage: {p}\n" for p in ps or [])
            scores["raw"][c].append(judge.judge(tok.encode(RAW.format(ctx=ctx, q=r["question"]))))
            cont = f"{ctx}Question: {r['question']}?"
            scores["channel"][c].append(
                loglik("The answer is yes.\n", cont) - loglik("The answer is no.\n", cont)
            )
    free = {}
    for c, n_ps in (("closed", 0), ("rag", 2), ("oracle", 1)):
        vals = {"chat": [], "raw": []}
        for na in ("N/A", "", "[MASK]"):
            srcs = "\n\n".join(f"[{i}] {na}" for i in range(1, n_ps + 1))
            vals["chat"].append(
                judge.ask(CLOSED.format(q=na) if not n_ps else WITH_SOURCES.format(sources=srcs, q=na))
            )
            vals["raw"].append(judge.judge(tok.encode(RAW.format(ctx=f"Passage: {na}\n" * n_ps, q=na))))
        for f, v in vals.items():
            free[f, c] = sum(v) / len(v)
    y = np.array([r["yes"] for r in rows])
    table = []
    for f, by in scores.items():
        for c, s in by.items():
            s = np.array(s)
            cal = f"{((s - free[f, c] > 0) == y).mean():.1%}" if (f, c) in free else ""
            table.append(
                [f, c, f"{((s > 0) == y).mean():.1%}", f"{(s > 0).mean():.1%}", cal, f"{auc(s, y):.3f}"]
            )
    print(f"\n### SmolLM2-135M-Instruct on the first {len(rows)} BoolQ questions ({y.mean():.1%} yes)\n")
    print(md_table(["score", "context", "accuracy", "says yes", "calibrated accuracy", "AUC"], table))
    gold = np.mean([r["passage"] in [passages[int(d)] for d, _ in h] for r, h in zip(rows, hyb)])
    print(f"\ngold passage in the hybrid top 2: {gold:.1%}")
    print(load_line("end"))


if __name__ == "__main__":
    main()
