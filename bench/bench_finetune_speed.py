"""Training speed and memory: full fine-tuning vs LoRA vs QLoRA (ours), and LoRA vs Hugging Face PEFT.

For each model (SmolLM2-135M-Instruct, Gemma 3 270M) and method, a fresh subprocess loads the model,
runs --warmup + --steps training steps on the same fixed batch of real text (--batch × --seq tokens of
Alpaca, the same token ids for every method; ours through the Trainer's ``lm_loss``), and reports the median step time as tokens/s and the peak
resident memory (VmHWM: weights, activations, gradients and optimizer state together; with the
model-load spike when that is higher). A step is forward, causal-LM loss, backward, AdamW, zero_grad.

- ours full: every weight trains (lmforge AdamW);
- ours LoRA: r 16, α 32, dropout 0, every linear layer but the output head (lmforge.train.lora);
- ours QLoRA: the same LoRA on an NF4 base with double quantization, bf16 compute (lmforge.train.nf4);
- PEFT LoRA: transformers + peft with the same r, α, dropout and target_modules="all-linear", on the same
  weights (our model exported to an HF folder, loaded with AutoModelForCausalLM in fp32, torch AdamW).

The ratio column is ours LoRA / PEFT LoRA tokens/s (the issue's goal: ≥ 1.0, peak memory ≤ PEFT's).

    python bench/bench_finetune_speed.py                 # both models, ~15 min on 2 cores
    python bench/bench_finetune_speed.py --models smollm2-135m-instruct --steps 4
    python bench/bench_finetune_speed.py --models smollm2-135m-instruct --methods lora peft --rounds 3 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, load_line, md_table, median  # noqa: E402

METHODS = ("full", "lora", "qlora", "peft")


def batch_ids(model_name: str, batch: int, seq: int) -> list[list[int]]:
    """batch rows of seq real tokens: Alpaca responses, concatenated, in the model's own tokenizer."""
    from lmforge import load_tokenizer

    tok = load_tokenizer(model_name)
    rows = json.loads((data_dir() / "chat" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    stream: list[int] = []
    for r in rows:
        stream += tok.encode(r["instruction"] + "\n" + r["output"] + "\n\n")
        if len(stream) >= batch * seq:
            break
    return [stream[i * seq : (i + 1) * seq] for i in range(batch)]


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM). Not ru_maxrss: on Linux that survives
    fork + exec, so a worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def summarize(rounds: list[dict]) -> dict:
    """One method's rounds as one row: the median step time, and the highest peak memory of any round."""
    return {**rounds[0], "step_s": median([r["step_s"] for r in rounds]),
            "peak_mb": max(r["peak_mb"] for r in rounds)}  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    ids = torch.tensor(json.loads(Path(args.ids).read_text()))  # (B, T)
    if args.method == "peft":
        import peft
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32)
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
        )
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

        def loss_fn():
            return model(input_ids=ids, labels=ids).loss
    else:
        from lmforge import load_model
        from lmforge.train.config import FinetuneConfig
        from lmforge.train.finetune import prepare_model
        from lmforge.train.optim import AdamW, param_groups
        from lmforge.train.trainer import lm_loss

        model = load_model(args.model)
        prepare_model(FinetuneConfig(method=args.method, lora_r=16, lora_alpha=32, lora_dropout=0.0), model)
        model.train()
        opt = AdamW(param_groups(model, 0.0), lr=1e-4)
        # the Trainer's batch: labels are the next tokens, the last position unscored (as HF pads its labels)
        batch = {"input_ids": ids, "labels": F.pad(ids[:, 1:], (0, 1), value=-100)}

        def loss_fn():
            return lm_loss(model, batch)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loaded = peak_rss_mb()
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"step_s": median(times), "tokens": ids.numel(), "peak_mb": peak_rss_mb(),
                      "load_peak_mb": loaded, "trainable": trainable, "loss": float(loss)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the methods this many times, interleaved: the median step time, the highest peak memory",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(load_line("start"))
    from lmforge import load_model
    from lmforge.model.export import save_hf

    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ids_file = Path(tmp) / f"{name}.ids.json"
            ids_file.write_text(json.dumps(batch_ids(name, args.batch, args.seq)))
            hf_dir = Path(tmp) / f"{name}.hf"
            if "peft" in args.methods:
                m = load_model(name)
                save_hf(m, hf_dir)  # the same (dequantized) weights for transformers
                del m
            runs: dict[str, list[dict]] = {m: [] for m in args.methods}
            for rnd, method in ((r, m) for r in range(args.rounds) for m in args.methods):
                cmd = [sys.executable, __file__, "--worker", "--model", name, "--method", method, "--ids",
                       str(ids_file), "--hf-dir", str(hf_dir), "--steps", str(args.steps), "--warmup",
                       str(args.warmup)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{name} {method}: worker failed")
                runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"{name} {method} round {rnd + 1}: {runs[method][-1]}", flush=True)
            res = {m: summarize(rs) for m, rs in runs.items()}
            if "lora" in runs and "peft" in runs:
                per_round = [p["step_s"] / o["step_s"] for o, p in zip(runs["lora"], runs["peft"])]
                print(
                    f"{name} LoRA vs PEFT per round: {', '.join(f'{x:.2f}×' for x in per_round)}", flush=True
                )
            results[name] = {"median": res, "rounds": runs}
            for method, r in res.items():
                tps = r["tokens"] / r["step_s"]
                ratio = ""
                if method == "lora" and "peft" in res:
                    ratio = f"{tps / (res['peft']['tokens'] / res['peft']['step_s']):.2f}×"
                label = {"full": "ours, full", "lora": "ours, LoRA", "qlora": "ours, QLoRA",
                         "peft": "transformers + PEFT, LoRA"}[method]  # fmt: skip
                rows.append([name, label, f"{r['trainable'] / 1e6:.2f}M", f"{tps:.0f}", ratio,
                             f"{r['peak_mb']:.0f}", f"{r['load_peak_mb']:.0f}"])  # fmt: skip
    print(
        f"\nbatch {args.batch} × {args.seq} tokens, median of {args.steps} steps after {args.warmup} warm-up"
        f"{f', the median of {args.rounds} interleaved rounds' if args.rounds > 1 else ''}\n"
    )
    print(md_table(["model", "method", "trainable", "tokens/s", "LoRA vs PEFT", "peak RSS MB",
                    "peak RSS by end of load MB"], rows))  # fmt: skip
    print(load_line("end"))
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/finetune_speed.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
