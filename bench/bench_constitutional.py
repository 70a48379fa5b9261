"""Constitutional AI with SmolLM2-135M-Instruct: one critique → revision round, and the RLAIF judge vs humans.

1. The first --prompts held-out HH-RLHF harmless prompts (the `lmforge.train.align.split` held-out rows,
   seed 0) go through `constitutional_round` (answer → critique against a drawn principle → revision,
   greedy, at most --tokens new tokens each). Reported: the share of revisions that differ from the answer,
   the SFT examples and preference pairs that come out, and one full record.
2. The AI judge (`ai_preference`, both presentation orders averaged) labels --pairs held-out HH-RLHF pairs
   under the harmlessness principle; its agreement with the human label is reported with a binomial
   standard error (0.5 = chance), and the share of pairs where the two orders disagree (position bias).

    python bench/bench_constitutional.py        # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import load_model, load_tokenizer  # noqa: E402
from lmforge.data.chat import read_preferences  # noqa: E402
from lmforge.train.align import split  # noqa: E402
from lmforge.train.constitutional import (  # noqa: E402
    JUDGE,
    PRINCIPLES,
    constitutional_round,
    judge_orders,
    revision_pairs,
    sft_examples,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    print(load_line("start"))
    pairs = read_preferences(data_dir() / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz", on_bad="skip")
    _, held = split(pairs, 200, 0)
    model = load_model("smollm2-135m-instruct")
    tok = load_tokenizer("smollm2-135m-instruct")
    single = [p for p in held if len(p.prompt) == 1][: args.prompts]  # one-turn requests
    t0 = time.perf_counter()
    revs = constitutional_round(
        model, tok, [p.prompt[0]["content"] for p in single], max_new_tokens=args.tokens
    )
    round_s = time.perf_counter() - t0
    changed = sum(r.revision.strip() != r.response.strip() for r in revs)
    print(f"\n### One critique → revision round on {len(revs)} HH-RLHF prompts ({round_s:.0f} s)\n")
    print(md_table(["revisions that differ", "SFT examples", "preference pairs"],
                   [[f"{changed}/{len(revs)}", len(sft_examples(revs)), len(revision_pairs(revs))]]))  # fmt: skip
    ex = revs[0]
    print(f"\nexample\n- request: {ex.prompt!r}\n- answer: {ex.response!r}\n- principle: {ex.principle!r}\n"
          f"- critique: {ex.critique!r}\n- revision: {ex.revision!r}")  # fmt: skip

    t0 = time.perf_counter()
    agree = split_orders = 0
    judged = held[: args.pairs]
    for p in judged:
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in p.prompt)
        first, second = judge_orders(model, tok, prompt, p.chosen, p.rejected, PRINCIPLES[0])
        agree += first - second > 0  # = ai_preference > 0
        split_orders += (first > 0) == (second > 0)  # the same position wins in both orders
    judge_s = time.perf_counter() - t0
    acc = agree / len(judged)
    print(
        f"\n### RLAIF judge vs human labels on {len(judged)} held-out HH-RLHF harmless pairs ({judge_s:.0f} s)\n"
    )
    print(md_table(["judge", "agreement with humans", "± stderr", "same position wins both orders"],
                   [["SmolLM2-135M-Instruct, harmlessness principle, both orders", f"{acc:.3f}",
                     f"{math.sqrt(acc * (1 - acc) / len(judged)):.3f}", f"{split_orders / len(judged):.2f}"]]))  # fmt: skip
    print(f"\njudge prompt: {JUDGE[:80]!r}…")
    print(load_line("end"))


if __name__ == "__main__":
    main()
