"""A Bradley–Terry reward model on HH-RLHF harmless with SmolLM2-135M-Instruct as the frozen backbone.

The 2,307 usable pairs of ../shared/data/preference/hh_rlhf_harmless_base_test.jsonl.gz are shuffled
with --seed; the first --heldout are held out and the next --train train (lmforge.train.align.split:
`lmforge reward` and `lmforge dpo` make the same split with the same --seed and --heldout). Each conversation (prompt + chosen, prompt + rejected, in the chat template, at most
--max-length tokens) goes through the backbone once; the reward head is then fitted on the training
pairs' last-token features (lmforge.train.reward.fit_reward_head), with L2 chosen by 5-fold
cross-validation on the training pairs only.

Reported on the held-out pairs: accuracy (share of pairs where r(chosen) > r(rejected)), mean margin,
and two baselines: an untrained head (0.5 by symmetry) and "the longer answer wins". A check runs the
first 16 held-out pairs through RewardModel.forward and compares with the feature path.

    python bench/bench_reward.py                    # 1,000 + 200 pairs, ~20 min on 2 cores
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
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import load_model, load_tokenizer  # noqa: E402
from lmforge.data.chat import read_preferences  # noqa: E402
from lmforge.train.align import save_reward_model, split  # noqa: E402
from lmforge.train.pairs import tokenize_pairs  # noqa: E402
from lmforge.train.probe import fit_logistic, last_token_features  # noqa: E402
from lmforge.train.reward import RewardModel, fit_reward_head  # noqa: E402


def cv_l2(d: torch.Tensor, grid=(0.01, 0.1, 1.0, 10.0, 100.0), k: int = 5) -> tuple[float, dict]:
    """The L2 with the best 5-fold pairwise accuracy on the training differences d (N, D)."""
    folds = np.arange(len(d)) % k
    acc = {}
    for l2 in grid:
        hit = 0
        for f in range(k):
            tr = torch.from_numpy(folds != f)
            x = torch.cat([d[tr], -d[tr]])
            y = torch.cat([torch.ones(int(tr.sum())), torch.zeros(int(tr.sum()))])
            w, _ = fit_logistic(x, y, l2, bias=False)
            hit += int((d[~tr] @ w > 0).sum())
        acc[l2] = hit / len(d)
    return max(acc, key=acc.get), acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="bench/out/reward_features.pt")
    ap.add_argument("--out", default="bench/out/reward")
    args = ap.parse_args()
    print(load_line("start"))
    pairs = read_preferences(data_dir() / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz", on_bad="skip")
    train, held = split(pairs, args.heldout, args.seed, args.train)  # the split `lmforge reward/dpo` use
    tok = load_tokenizer("smollm2-135m-instruct")
    train = tokenize_pairs(tok, train, args.max_length)
    held = tokenize_pairs(tok, held, args.max_length)
    backbone = load_model("smollm2-135m-instruct")
    rm = RewardModel(backbone)
    key = json.dumps(vars(args) | {"cache": None, "out": None})
    cache = Path(args.cache)
    feats = torch.load(cache, weights_only=True) if cache.exists() else {}
    t0 = time.perf_counter()
    if feats.get("key") != key:
        seqs = [p.chosen.input_ids for p in train + held] + [p.rejected.input_ids for p in train + held]
        f = last_token_features(backbone, seqs, progress=True)
        n = len(train) + len(held)
        feats = {"key": key, "chosen": f[:n], "rejected": f[n:]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(feats, cache)
    feature_s = time.perf_counter() - t0
    nt = len(train)
    hw, hl = feats["chosen"], feats["rejected"]
    l2, grid = cv_l2(hw[:nt] - hl[:nt])
    fit = fit_reward_head(rm, train, l2, features=(hw[:nt], hl[:nt]))
    w = rm.score_head.weight[0].detach()
    rw, rl = hw[nt:] @ w - rm.offset, hl[nt:] @ w - rm.offset
    acc = float((rw > rl).float().mean())
    margin = float((rw - rl).mean())
    longer = float(np.mean([len(p.chosen) > len(p.rejected) for p in held]))
    ties = float(np.mean([len(p.chosen) == len(p.rejected) for p in held]))
    # the model path must agree with the feature path it was fitted on
    fw, fl = rm.score_pairs(held[:16], tok.eos_id if tok.eos_id is not None else 0)
    gap = float(torch.cat([fw - rw[:16], fl - rl[:16]]).abs().max())
    n = len(held)
    se = math.sqrt(acc * (1 - acc) / n)
    print(
        f"\nHH-RLHF harmless, {nt} training / {n} held-out pairs (seed {args.seed}), SmolLM2-135M-Instruct\n"
    )
    print(
        md_table(
            ["reward model", "held-out accuracy", "± stderr", "mean margin"],
            [
                [f"frozen backbone + fitted head (L2 {l2:g})", f"{acc:.3f}", f"{se:.3f}", f"{margin:.3f}"],
                ["untrained head", "0.500", "", "0"],
                [f"the longer answer wins ({100 * ties:.0f}% ties)", f"{longer:.3f}", "", ""],
            ],
        )
    )
    print(f"\ntraining accuracy {fit['train_accuracy']:.3f}; 5-fold CV accuracy by L2: "
          + ", ".join(f"{k:g}: {v:.3f}" for k, v in grid.items()))  # fmt: skip
    print(f"RewardModel.forward vs feature path, 16 held-out pairs: max |Δr| = {gap:.2e}")
    print(f"features: {feature_s:.0f} s for {2 * (nt + n)} sequences")
    print(load_line("end"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_reward_model(rm, out / "reward_model", "smollm2-135m-instruct")  # for `lmforge ppo --reward-model`
    (out / "summary.json").write_text(
        json.dumps(
            {
                "train": nt,
                "heldout": n,
                "l2": l2,
                "accuracy": acc,
                "margin": margin,
                "longer_wins": longer,
                "cv": grid,
                "forward_gap": gap,
            },
            indent=2,
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
