"""Speculative decoding benchmark: plain greedy decoding vs draft-then-verify, SmolLM2-135M-Instruct.

For each chat prompt (the model's chat template, greedy, --tokens new tokens, end tokens ignored so
every run makes the same number of tokens) we time `stream_ids` and `speculative_stream_ids` with each
drafter and num_draft k in {2, 4, 6}; every speculative run is checked to give the plain run's tokens.
Reported per (drafter, k): the acceptance rate (accepted / drafted over all prompts), tokens per target
forward, tokens/s from the total time of the prompts (median over --repeats rounds) and the speed-up vs
plain decoding in the same round (median of the per-round ratios, so machine noise hits both alike).

With --layers, the LayerSkip section first measures, for several block subsets, how often the shallow
model's argmax agrees with the full model's over the plain runs' outputs (teacher-forced, one forward
each): the greedy acceptance rate per draft token, which picks LayerSkipDrafter's default subset.

The machine may be shared: the load average is printed at the start and the end.

    python bench/bench_speculative.py                     # 3 prompts, 128 tokens, 3 rounds
    python bench/bench_speculative.py --quick             # 2 prompts, 48 tokens, 1 round
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_line, md_table, median  # noqa: E402

PROMPTS = [
    "Rewrite this paragraph in simpler words: The committee has decided to postpone the annual meeting "
    "until further notice, because several members are unable to attend on the planned date. A new date "
    "will be announced as soon as possible.",
    "Repeat this code but rename the function to add_numbers and add a docstring:\n\n"
    "def f(a, b):\n    result = a + b\n    return result\n\nprint(f(2, 3))\n",
    "Why is the sky blue? Explain it to a child.",
    "Write a short story about a robot who learns to paint.",
]


def layer_subsets(n: int) -> dict[str, list[int]]:
    from lmforge.infer.speculative import default_layers

    def skip(lo: int, hi: int) -> list[int]:
        return [i for i in range(n) if not lo <= i <= hi]

    return {
        "default (skip 12..15 of 30)": default_layers(n),
        "skip 3 and 17": [i for i in range(n) if i not in (3, 17)],
        "first half + last 2": list(range(n // 2)) + [n - 2, n - 1],
        "every other + last": sorted(set(range(0, n, 2)) | {n - 1}),
        "first 2/3 + last 2": list(range(2 * n // 3)) + [n - 2, n - 1],
        "skip 10..19": skip(10, 19),
        "skip 10..17": skip(10, 17),
        "skip 20..25": skip(20, 25),
    }


def agreement(model, seqs: list[tuple[int, object]], layers: list[int]) -> float:
    """Share of generated positions where the shallow model's argmax equals the full model's."""
    import torch

    hit = total = 0
    with torch.inference_mode():
        for start, ids in seqs:
            full = model(ids).argmax(-1)[0, start - 1 : -1]
            draft = model(ids, layers=layers).argmax(-1)[0, start - 1 : -1]
            hit += int((full == draft).sum())
            total += full.numel()
    return hit / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    ap.add_argument("--prompts", type=int, default=3, help=f"how many prompts, up to {len(PROMPTS)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--ks", default="2,4,6", help="num_draft values (default 2,4,6)")
    ap.add_argument("--drafters", default="ngram,layerskip", help="drafters to run (default both)")
    ap.add_argument("--layers", action="store_true", help="also measure LayerSkip agreement per subset")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="2 prompts, 48 tokens, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.tokens, args.repeats = 2, 48, 1

    import torch

    import lmforge
    from lmforge.infer.generate import stream_ids
    from lmforge.infer.sampling import SamplingParams
    from lmforge.infer.speculative import LayerSkipDrafter, NgramDrafter, speculative_stream_ids

    torch.set_num_threads(args.threads)
    model = lmforge.load_model("smollm2-135m-instruct").eval()
    tok = model.tokenizer
    prompts = [
        torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))])
        for p in PROMPTS[: args.prompts]
    ]
    greedy = SamplingParams(temperature=0)
    ks = [int(k) for k in args.ks.split(",")]
    drafters = {"ngram": lambda: NgramDrafter(), "layerskip": lambda: LayerSkipDrafter(model)}
    configs = [("plain", 0)] + [(d, k) for d in args.drafters.split(",") for k in ks]

    print("# Speculative decoding, SmolLM2-135M-Instruct (float32, greedy)\n")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {len(prompts)} chat prompts × {args.tokens} "
        f"new tokens, median of {args.repeats} round(s).\n"
    )
    print(load_line("start") + "\n", flush=True)
    started = time.perf_counter()

    def run(name: str, k: int, ids) -> tuple[list[int], float, dict]:
        stats: dict = {}
        t = time.perf_counter()
        if name == "plain":
            out = list(stream_ids(model, ids, args.tokens, greedy))
        else:
            out = list(
                speculative_stream_ids(model, ids, args.tokens, greedy, drafters[name](), None, k, stats)
            )
        return out, time.perf_counter() - t, stats

    with torch.inference_mode():
        run("plain", 0, prompts[0][:, :8])  # warm-up
    reference: list[list[int]] = []
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    totals: dict[tuple, dict] = {
        c: {"drafted": 0, "accepted": 0, "forwards": 0, "tokens": 0} for c in configs
    }
    for r in range(args.repeats):
        order = configs if r % 2 == 0 else configs[:1] + configs[1:][::-1]
        for c in order:
            elapsed = 0.0
            for i, ids in enumerate(prompts):
                out, s, st = run(*c, ids)
                elapsed += s
                if c[0] == "plain" and r == 0:
                    reference.append(out)
                elif c[0] != "plain" and out != reference[i]:
                    raise SystemExit(f"{c} gave different tokens than plain decoding on prompt {i}")
                if r == 0 and st:
                    tot = totals[c]
                    tot["drafted"] += st["drafted"]
                    tot["accepted"] += st["accepted"]
                    tot["forwards"] += st["target_forwards"] - 1  # the prefill is not a decoding step
                    tot["tokens"] += st["tokens"]
            times[c].append(elapsed)
            print(f"  round {r + 1}: {c[0]} k={c[1]}: {elapsed:.1f} s", file=sys.stderr, flush=True)

    n_tokens = args.tokens * len(prompts)
    rows = []
    for c in configs:
        tps = n_tokens / median(times[c])
        speedup = median([p / t for p, t in zip(times[("plain", 0)], times[c])])
        tot = totals[c]
        if c[0] == "plain":
            rows.append(["plain (stream_ids)", "-", "-", 1.0, tps, 1.0])
        else:
            rate = tot["accepted"] / max(tot["drafted"], 1)
            rows.append(
                [c[0], c[1], f"{100 * rate:.1f}%", tot["tokens"] / max(tot["forwards"], 1), tps, speedup]
            )
    headers = ["drafter", "k", "acceptance", "tokens / target forward", "tokens/s", "speed-up vs plain"]
    print("## Plain vs speculative (greedy; all outputs checked equal to plain decoding)\n")
    print(md_table(headers, rows) + "\n", flush=True)

    if args.layers:
        seqs = [
            (ids.shape[1], torch.cat([ids[0], torch.tensor(ref)])[None])
            for ids, ref in zip(prompts, reference)
        ]
        rows = []
        for name, layers in layer_subsets(model.config.n_layers).items():
            rows.append([name, len(layers), f"{100 * agreement(model, seqs, layers):.1f}%"])
        print("## LayerSkip: greedy agreement of block subsets with the full model\n")
        print("Teacher-forced over the plain outputs above: the chance a draft token is accepted.\n")
        print(md_table(["layers", "blocks", "top-1 agreement"], rows) + "\n")
    print(load_line("end") + f" Total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
