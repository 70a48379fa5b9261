"""RAG on BoolQ: does retrieving the passage help SmolLM2-135M-Instruct answer yes/no questions?

All unique BoolQ validation passages (2,938 of the 3,270 rows; some questions share one) go into one
index (BM25 + MiniLM dense, RRF hybrid). Each question is then answered three ways, always by comparing
log p(yes) with log p(no) for the first answer token after the chat-formatted prompt (as lm-eval's boolq
compares " yes" and " no"):

- closed-book: the question alone;
- RAG: the top --k hybrid passages as numbered sources, then the question;
- oracle: the question's own passage.

Then the first --generate questions go through the RAG pipeline in free text (hybrid top-k, grounded prompt
with numbered sources, generation): the share of answers that cite a source, and groundedness (the share
of answer sentences a cited passage supports, by lexical overlap and as judged by the model itself).

Also reported: Recall@k of the gold passage for BM25, dense and hybrid, and the majority-class baseline
(62.2% "yes"). Standard errors are binomial.

    python bench/bench_rag.py                 # first 1,000 questions, ~15 min on 2 cores
    python bench/bench_rag.py --limit 0       # all 3,270
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import load_model, load_tokenizer  # noqa: E402
from lmforge.retrieval.bm25 import BM25  # noqa: E402
from lmforge.retrieval.dense import DenseIndex  # noqa: E402
from lmforge.retrieval.fusion import rrf  # noqa: E402
from lmforge.retrieval.rag import RAG  # noqa: E402
from lmforge.retrieval.rerank import LLMReranker  # noqa: E402

CLOSED = "Question: {q}?\nAnswer the question with yes or no."
WITH_SOURCES = "Sources:\n{sources}\n\nUsing the sources, answer the question with yes or no.\nQuestion: {q}?"


def read_boolq(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        passage, question = r["query"].split("\nQuestion: ", 1)
        rows.append(
            {
                "passage": passage.removeprefix("Passage: ").strip(),
                "question": question.strip().rstrip("?"),
                "yes": r["choices"][r["gold"]] == "yes",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=1000, help="questions to answer (0: all)")
    ap.add_argument("-k", type=int, default=2, help="retrieved passages in the RAG prompt")
    ap.add_argument(
        "--generate", type=int, default=40, help="questions answered in free text, for groundedness"
    )
    ap.add_argument("--out", default="bench/out/rag.json")
    args = ap.parse_args()
    print(load_line("start"))
    rows = read_boolq(data_dir() / "eval" / "suite" / "boolq.jsonl")
    passages = list(dict.fromkeys(r["passage"] for r in rows))
    pid = {p: str(i) for i, p in enumerate(passages)}
    ids = [pid[p] for p in passages]
    t0 = time.perf_counter()
    bm = BM25().index(passages, ids)
    enc = load_model("all-minilm-l6-v2")
    dense = DenseIndex(384).add(enc.encode(passages, progress=True).numpy(), ids)
    index_s = time.perf_counter() - t0
    qs = rows if args.limit <= 0 else rows[: args.limit]
    lex = bm.search_batch([r["question"] for r in qs], 10)
    den = dense.search(enc.encode([r["question"] for r in qs]).numpy(), 10)
    hyb = [rrf([a, b], top=10) for a, b in zip(lex, den)]
    recall = {}
    for name, run in (("bm25", lex), ("dense", den), ("hybrid", hyb)):
        recall[name] = {
            k: sum(pid[r["passage"]] in [d for d, _ in h[:k]] for r, h in zip(qs, run)) / len(qs)
            for k in (1, 2, 5, 10)
        }

    judge = LLMReranker(load_model("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct"))
    correct = {"closed-book": 0, "RAG": 0, "oracle passage": 0}
    said_yes = dict.fromkeys(correct, 0)
    t1 = time.perf_counter()
    from tqdm import tqdm

    for r, h in tqdm(list(zip(qs, hyb)), desc="boolq", unit="q"):
        top = [passages[int(d)] for d, _ in h[: args.k]]
        prompts = {
            "closed-book": CLOSED.format(q=r["question"]),
            "RAG": WITH_SOURCES.format(
                sources="\n\n".join(f"[{i}] {p}" for i, p in enumerate(top, 1)), q=r["question"]
            ),
            "oracle passage": WITH_SOURCES.format(sources=f"[1] {r['passage']}", q=r["question"]),
        }
        for name, text in prompts.items():
            yes = judge.ask(text) > 0
            said_yes[name] += yes
            correct[name] += yes == r["yes"]
    answer_s = time.perf_counter() - t1

    # Free-text answers through the RAG pipeline: citations and groundedness (lexical and model-judged).
    chat = judge.model
    ground = {"lexical": [], "model": []}
    cites = refused = 0
    gen = qs[: args.generate]

    def retrieve(q: str, k: int) -> list:
        return rrf([bm.search(q, 10), dense.search(enc.encode([q]).numpy(), 10)[0]], top=k)

    rag = RAG(retrieve, dict(zip(ids, passages)), chat, k=args.k, max_tokens=96)
    example = None
    for r in tqdm(gen, desc="rag answers", unit="q"):
        ans = rag.answer(r["question"] + "?")
        refused += ans.refused
        cites += bool(ans.cited)
        g = rag.groundedness(ans, judge=judge)
        for key in ground:
            if key in g:
                ground[key].append(g[key])
        example = example or ans
    n = len(qs)
    majority = sum(r["yes"] for r in qs) / n
    table = []
    for name, c in correct.items():
        acc = c / n
        table.append(
            [
                name,
                f"{100 * acc:.2f}",
                f"{100 * math.sqrt(acc * (1 - acc) / n):.2f}",
                f"{100 * said_yes[name] / n:.1f}",
            ]
        )
    table.append(["majority class (yes)", f"{100 * majority:.2f}", "", "100.0"])
    print(f"\nBoolQ, first {n} questions, SmolLM2-135M-Instruct (GGUF Q4_1), k = {args.k} hybrid passages\n")
    print(md_table(["setting", "accuracy %", "± stderr", "answers yes %"], table))
    print()
    print(
        md_table(
            ["retriever", "R@1", "R@2", "R@5", "R@10"],
            [[name] + [f"{100 * v:.1f}" for v in r.values()] for name, r in recall.items()],
        )
    )
    if gen:
        print(f"\nFree-text RAG answers to the first {len(gen)} questions (max 96 tokens):\n")
        print(
            md_table(
                ["groundedness (lexical)", "groundedness (model)", "answers citing a source %", "refused %"],
                [
                    [
                        f"{statistics.fmean(ground['lexical']):.3f}" if ground["lexical"] else "",
                        f"{statistics.fmean(ground['model']):.3f}" if ground["model"] else "",
                        f"{100 * cites / len(gen):.1f}",
                        f"{100 * refused / len(gen):.1f}",
                    ]
                ],
            )
        )
        if example is not None:
            print(f"\nexample: {example.question!r} -> {example.text!r} (cited {example.cited})")
    print(f"\nindexing {len(passages)} passages: {index_s:.0f} s; answering: {answer_s:.0f} s")
    print(load_line("end"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "n": n,
                "k": args.k,
                "accuracy": {k: v / n for k, v in correct.items()},
                "majority": majority,
                "recall": recall,
                "groundedness": {k: statistics.fmean(v) if v else None for k, v in ground.items()},
                "cited": cites / max(len(gen), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
