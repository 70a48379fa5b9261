"""Training throughput: lmforge's trainer vs nanoGPT's "baby GPT" on char-level tinyshakespeare.

The anchor (issue 5): nanoGPT's shakespeare_char config — 6 layers, 6 heads, 384 wide, block 256, batch
12, ~10.7M parameters, float32 on the CPU — measured here at ~1.39 s/iteration ≈ 2,200 tokens/s. We run
`nanogpt_ref.py` (that model, written as nanoGPT writes it) and lmforge's Transformer with the same shape
(the gpt2 preset: LayerNorm with biases, GELU MLP, learned positions, tied head) through lmforge's
Trainer, on the same characters and the same batch shape, in one process, one configuration after the
other:

- ms per iteration (median of --iters after --warmup iterations; one iteration = forward, backward,
  clipping to 1.0 and an AdamW step on 12 × 256 tokens), tokens/s, and the ratio to nanoGPT float32;
- lmforge in float32 and in bfloat16 autocast, eager and `torch.compile`d (compile time reported apart).

With --minutes M, also the quality at equal wall clock: each of nanoGPT (fp32) and lmforge's best
configuration trains for M minutes (lr 1e-3, warmup 100, cosine to 1e-4 over the steps the speed run
predicts), and the best validation loss (nats per character on the last 10% of the text) is reported.
With --muon, a third row trains the same lmforge model for the same minutes with Muon (lr 0.02) on its
hidden matrices and AdamW on the rest, as nanochat does.

    python bench/bench_train.py                      # speed table, ~3 minutes on 2 cores
    python bench/bench_train.py --minutes 10         # + 2 × 10 minutes of training for the quality row
    python bench/bench_train.py --rows nanogpt,lmforge-fp32 --minutes 10 --muon   # + Muon at equal wall clock
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, md_table  # noqa: E402
from nanogpt_ref import GPT  # noqa: E402

LAYERS, HEADS, WIDTH, BLOCK, BATCH = 6, 6, 384, 256, 12


def char_data() -> tuple[torch.Tensor, torch.Tensor, int]:
    """tinyshakespeare as character ids, split 90/10 as nanoGPT's prepare.py does."""
    text = (data_dir() / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([table[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


class Windows:
    """Random (x, y) windows, nanoGPT's get_batch; with a saveable position like lmforge's loaders."""

    def __init__(self, data: torch.Tensor, seed: int):
        self.data, self.gen = data, torch.Generator().manual_seed(seed)

    def next_batch(self):
        ix = torch.randint(len(self.data) - BLOCK - 1, (BATCH,), generator=self.gen)
        x = torch.stack([self.data[i : i + BLOCK] for i in ix.tolist()])
        y = torch.stack([self.data[i + 1 : i + 1 + BLOCK] for i in ix.tolist()])
        return x, y

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])


def nanogpt_step_fn(vocab: int, train: torch.Tensor, compiled: bool, lr_fn):
    torch.manual_seed(0)
    model = GPT(vocab, BLOCK, LAYERS, HEADS, WIDTH, dropout=0.0)
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99))
    fwd = torch.compile(model) if compiled else model
    batches = Windows(train, 1)
    state = {"step": 0}

    def step() -> float:
        for g in opt.param_groups:
            g["lr"] = lr_fn(state["step"])
        x, y = batches.next_batch()
        loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss.item()

    @torch.no_grad()
    def val_loss(val: torch.Tensor, batches_n: int = 20) -> float:
        model.eval()
        w = Windows(val, 7)
        out = statistics.mean(fwd(*w.next_batch()).item() for _ in range(batches_n))
        model.train()
        return out

    return step, val_loss, sum(p.numel() for p in model.parameters())


def lmforge_step_fn(vocab: int, train: torch.Tensor, precision: str, compiled: bool, lr_fn,
                    optimizer: str = "adamw"):  # fmt: skip
    from lmforge.model.presets import preset
    from lmforge.model.transformer import Transformer
    from lmforge.train.config import TrainConfig
    from lmforge.train.trainer import Trainer

    cfg = TrainConfig(precision=precision, compile=compiled, seq_len=BLOCK, batch_size=BATCH, grad_clip=1.0,
                      eval_every=0, ckpt_every=0, log_every=10**9, out_dir="/tmp/lmforge-bench-train")  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(preset("gpt2", vocab_size=vocab, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=HEADS, dim=WIDTH,
                               ffn_dim=4 * WIDTH, max_seq_len=BLOCK)).init_weights()  # fmt: skip
    from lmforge.train.optim import AdamW, build_optimizers, param_groups

    if optimizer == "muon":  # nanochat's split: Muon (lr 0.02) for hidden matrices, AdamW for the rest
        opts = build_optimizers(model, 1e-3, 0.02, 0.1)
    else:
        opts = [AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99))]
    wrapped = torch.compile(model) if compiled else model
    trainer = Trainer(cfg, wrapped, opts, lr_fn, Windows(train, 1))

    def step() -> float:
        return trainer.train_step().loss

    @torch.no_grad()
    def val_loss(val: torch.Tensor, batches_n: int = 20) -> float:
        import torch.nn.functional as F

        model.eval()
        w = Windows(val, 7)
        losses = []
        for _ in range(batches_n):
            x, y = w.next_batch()
            with trainer.autocast():
                logits = wrapped(x)
            losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item())
        model.train()
        return statistics.mean(losses)

    return step, val_loss, sum(p.numel() for p in model.parameters())


def time_steps(step, warmup: int, iters: int) -> tuple[float, float]:
    t = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - t
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--rows",
        default="nanogpt,lmforge-fp32,lmforge-bf16,nanogpt-compile,lmforge-fp32-compile,lmforge-bf16-compile",
    )
    p.add_argument("--minutes", type=float, default=0.0, help="equal-wall-clock quality run per side")
    p.add_argument("--muon", action="store_true", help="quality rows: add lmforge with Muon + AdamW")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, val, vocab = char_data()
    const = lambda s: 1e-3  # noqa: E731
    rows, results = [], {}
    for row in args.rows.split(","):
        compiled = row.endswith("-compile")
        if row.startswith("nanogpt"):
            step, _, n = nanogpt_step_fn(vocab, train, compiled, const)
        else:
            step, _, n = lmforge_step_fn(vocab, train, "bf16" if "bf16" in row else "fp32", compiled, const)
        s, first = time_steps(step, args.warmup, args.iters)
        results[row] = s
        print(f"  {row}: {s * 1000:.0f} ms/iter (warm-up {first:.1f} s)", file=sys.stderr, flush=True)
        rows.append([row, f"{n / 1e6:.2f}M", round(first, 1), round(s * 1000), round(BATCH * BLOCK / s)])
    base = results.get("nanogpt")
    for r in rows:
        r.append(f"{base / results[r[0]]:.2f}" if base else "–")
    print(f"## Training throughput: nanoGPT baby GPT shape ({LAYERS}L, {HEADS}H, {WIDTH}d, block {BLOCK}, "
          f"batch {BATCH}), char-level tinyshakespeare, {args.threads} threads, median of {args.iters}\n")  # fmt: skip
    print(md_table(["row", "params", "warm-up s", "ms / iter", "tokens/s", "× nanoGPT fp32"], rows))

    if args.minutes > 0:
        best_row = min(
            (r for r in results if r.startswith("lmforge")), key=results.get, default="lmforge-fp32"
        )
        out = []
        for row in ("nanogpt", best_row) + ((best_row + " muon",) if args.muon else ()):
            optimizer = "muon" if row.endswith(" muon") else "adamw"
            row_kind = row.removesuffix(" muon")
            compiled = row_kind.endswith("-compile")
            # Muon's step costs a few Newton–Schulz iterations more: its schedule is sized by the AdamW
            # step time, so it decays a little late (cosine cut short) rather than ending early
            est = int(args.minutes * 60 / results.get(row_kind, results.get("nanogpt", 1.0)))

            def lr(s: int, total: int = max(est, 200)) -> float:
                if s < 100:
                    return 1e-3 * (s + 1) / 100
                return 1e-4 + 0.5 * (1e-3 - 1e-4) * (
                    1 + math.cos(math.pi * min(1.0, (s - 100) / (total - 100)))
                )

            if row.startswith("nanogpt"):
                step, val_loss, _ = nanogpt_step_fn(vocab, train, compiled, lr)
            else:
                step, val_loss, _ = lmforge_step_fn(
                    vocab, train, "bf16" if "bf16" in row else "fp32", compiled, lr, optimizer
                )
            t0, steps, best = time.perf_counter(), 0, math.inf
            while time.perf_counter() - t0 < args.minutes * 60:
                step()
                steps += 1
                if steps % 100 == 0:
                    best = min(best, val_loss(val))
            best = min(best, val_loss(val))
            print(f"  {row}: {steps} steps, best val {best:.4f}", file=sys.stderr, flush=True)
            out.append([row, steps, steps * BATCH * BLOCK, round(best, 4)])
        for r in out:
            r.append(f"{r[3] / out[0][3]:.3f}")
        print(f"\n## Quality at equal wall clock ({args.minutes:g} minutes each)\n")
        print(md_table(["row", "steps", "tokens", "best val loss (nats/char)", "× nanoGPT"], out))


if __name__ == "__main__":
    main()
