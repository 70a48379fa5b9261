"""How much does one dose of 4-bit rounding cost SmolLM2-135M on ARC-Easy and PIQA?

The reproduction (docs/evaluation.md) scores the GGUF Q4_1 copy of SmolLM2-135M-Instruct; the published
numbers are from the original 16-bit weights, which are not in this sandbox. So we cannot score W, only
W' = W + E (E: Q4_1's rounding). What we can do is add a second, independent dose of the same noise and
watch what it costs: W'' = Q4_1(W') on a grid shifted by half a block.

- Q4_1 (llama.cpp): per block of 32 weights of a row, w ≈ q·d + m with q in 0..15, d and m in fp16.
  lmforge.model.quantize.quantize_int4 is that same asymmetric min/max scheme (stored as (q-8)·s + z).
- aligned: requantizing W' on its own block grid gives W' back (each block already holds at most 16
  levels) — the control: Δ must be 0.
- shifted: roll each row by `--shift` columns (default 16) before blocking, so every new block straddles
  two old ones; the rounding error is new and of Q4_1's size. Several shifts give several doses.

If one more dose of Q4_1 noise costs about the gap we see against the published numbers, the gap is what
4-bit weights cost this 135M model, not our harness (whose log-likelihoods match transformers within 1e-3).

    python bench/bench_quant_noise.py                          # ARC-Easy + PIQA, full, bf16 compute
    python bench/bench_quant_noise.py --limit 500 --shifts 8,16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, load_line, md_table  # noqa: E402

import lmforge  # noqa: E402
from lmforge.eval.harness import Evaluator  # noqa: E402
from lmforge.eval.tasks import BUILTIN  # noqa: E402
from lmforge.model.quantize import quantize_int4  # noqa: E402


def requantize_q4_1(w: torch.Tensor, shift: int) -> torch.Tensor:
    """Q4_1 round trip (blocks of 32 along the input dim, fp16 scale and min) on a grid moved by `shift`."""
    rolled = torch.roll(w.float(), shifts=shift, dims=1)
    q, s, z = quantize_int4(rolled, 32, torch.float16)
    n, k = w.shape
    back = (q.float() - 8).reshape(n, k // 32, 32) * s.float()[..., None] + z.float()[..., None]
    return torch.roll(back.reshape(n, k), shifts=-shift, dims=1).to(w.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--shifts", default="0,16", help="0 is the aligned control")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype of every run (bf16: 1.5x faster here)")
    args = ap.parse_args()
    print(load_line("start"))
    tasks = [BUILTIN[t] for t in args.tasks.split(",")]
    rows, base = [], {}
    for shift in [None, *(int(s) for s in args.shifts.split(","))]:
        model = lmforge.load_model(args.model, dtype=torch.float32)
        changed, rel = 0, []
        if shift is not None:
            with torch.no_grad():
                for layer in model.layers:
                    for mod in layer.modules():
                        if isinstance(mod, torch.nn.Linear):
                            new = requantize_q4_1(mod.weight, shift)
                            rel.append(((new - mod.weight).norm() / mod.weight.norm()).item())
                            changed += int(not torch.equal(new, mod.weight))
                            mod.weight.copy_(new)
        model = model.to(getattr(torch, args.dtype))
        ev = Evaluator(model, progress=False)
        name = "as loaded (Q4_1)" if shift is None else f"+ Q4_1 again, shift {shift}"
        t0 = time.perf_counter()
        scores = dict(base) if shift is not None and changed == 0 else {}  # the same weights: same scores
        for task in tasks if not scores else []:
            r = ev.run(task, data_dir(), args.limit)
            metric = "acc" if task.name == "arc_easy" else "acc_norm"
            scores[task.name] = 100 * r["metrics"][metric]
        if shift is None:
            base = scores
        rel_err = sum(rel) / len(rel) if rel else 0.0
        rows.append([name, changed, f"{rel_err:.4f}", *(f"{scores[t.name]:.2f} ({scores[t.name] - base[t.name]:+.2f})"
                                                         for t in tasks), round(time.perf_counter() - t0)])  # fmt: skip
        print(rows[-1], flush=True)
    heads = ["weights", "linears changed", "mean ‖ΔW‖/‖W‖"]
    heads += [f"{t.name} {'acc' if t.name == 'arc_easy' else 'acc_norm'} (Δ)" for t in tasks] + ["s"]
    print(md_table(heads, rows))
    print(load_line("end"))


if __name__ == "__main__":
    main()
