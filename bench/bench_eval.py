"""Multiple-choice scoring speed: lmforge's harness vs transformers run through the same harness loop.

The anchor (issue 6): the same tasks, rows and requests (lmforge.eval builds them), scored two ways in
one process, one after the other:

- lmforge: our Transformer from the GGUF, each question's answers as one prefix tree (the prompt computed
  once), trees packed into rows of 512 tokens, 2 rows a batch, the unembedding only where a token is scored;
- transformers: AutoModelForCausalLM from the same GGUF, scored the way lm-eval's HFLM backend does it —
  every (prompt, answer) pair its own row, rows sorted longest first, right-padded batches of
  --hf-batch, one forward each, log-softmax over every position.

Both run with torch's threads on the same CPU. Reported: rows/s of each, the ratio, the largest
|Δ Σ log p| between the two over every request, and whether acc and acc_norm agree row for row.

    python bench/bench_eval.py                          # ARC-Easy and HellaSwag, 200 rows each
    python bench/bench_eval.py --tasks arc_easy,piqa --limit 400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, md_table  # noqa: E402

from lmforge.eval.harness import Evaluator  # noqa: E402
from lmforge.eval.loglik import Group, Scored  # noqa: E402
from lmforge.eval.tasks import BUILTIN  # noqa: E402


class HFScorer:
    """lm-eval's HFLM loop: one row per (context, continuation), longest first, padded batches."""

    def __init__(self, model, batch: int):
        self.model, self.batch, self.max_len = model, batch, model.config.max_position_embeddings

    @torch.no_grad()
    def score(self, groups: list[Group], progress=None) -> list[list[Scored]]:
        reqs = [
            (g, k, grp.context + c) for g, grp in enumerate(groups) for k, c in enumerate(grp.continuations)
        ]
        order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][2]))
        out: list[list[Scored | None]] = [[None] * len(g.continuations) for g in groups]
        for s in range(0, len(order), self.batch):
            chunk = [reqs[i] for i in order[s : s + self.batch]]
            width = max(len(r[2]) - 1 for r in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, (_, _, toks) in enumerate(chunk):
                ids[row, : len(toks) - 1] = torch.tensor(toks[:-1])
                mask[row, : len(toks) - 1] = 1
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for row, (g, k, toks) in enumerate(chunk):
                cont = groups[g].continuations[k]
                start = len(toks) - 1 - len(cont)
                lp = logp[row, start : start + len(cont)]
                target = torch.tensor(cont)
                out[g][k] = Scored(float(lp.gather(1, target[:, None]).sum()),
                                   bool((lp.argmax(-1) == target).all()), len(cont))  # fmt: skip
        return out  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="arc_easy,hellaswag")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--hf-batch", type=int, default=8)
    args = ap.parse_args()

    import transformers

    import lmforge
    from lmforge.registry import resolve

    path = resolve(args.model)
    ours = lmforge.load_model(args.model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    rows = []
    for name in args.tasks.split(","):
        task = BUILTIN[name]
        runs = {}
        for who in ("lmforge", "transformers"):
            ev = Evaluator(ours, progress=False)
            if who == "transformers":
                ev.scorer = HFScorer(hf, args.hf_batch)
            t0 = time.perf_counter()
            runs[who] = ev.run(task, data_dir(), limit=args.limit)
            runs[who]["wall"] = time.perf_counter() - t0
        a, b = runs["lmforge"], runs["transformers"]
        delta = max(
            abs(x - y) for ra, rb in zip(a["rows"], b["rows"]) for x, y in zip(ra["logliks"], rb["logliks"])
        )
        same = all(
            ra["acc"] == rb["acc"] and ra.get("acc_norm") == rb.get("acc_norm")
            for ra, rb in zip(a["rows"], b["rows"])
        )
        n = a["n"]
        rows.append([name, n, f"{n / a['wall']:.1f}", f"{n / b['wall']:.1f}", f"{b['wall'] / a['wall']:.2f}×",
                     f"{delta:.1e}", "yes" if same else "no",
                     f"{100 * a['metrics'].get('acc_norm', a['metrics']['acc']):.2f}"])  # fmt: skip
        print(f"{name}: lmforge {a['wall']:.1f} s, transformers {b['wall']:.1f} s", flush=True)
    print(f"\n{args.model}, torch threads {torch.get_num_threads()}, transformers batch {args.hf_batch}\n")
    print(md_table(["task", "rows", "lmforge rows/s", "transformers rows/s", "speed-up", "max |Δ log p|",
                    "same acc/acc_norm", "acc_norm (ours)"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
