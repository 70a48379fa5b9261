"""`lmforge speedrun`: the whole pretraining pipeline in one command, with a report card (as nanochat's).

    corpus ─train_bpe→ tokenizer ─tokenize_corpus→ token shards ─Trainer→ model ─→ val bpb, samples, report.md

The CPU preset trains a 4096-token byte-level BPE on the shared TinyStories subset + tinyshakespeare, a
4-layer Llama-style model (nanochat's depth dial: 256 wide) on 256-token windows for a fixed wall-clock
budget, then measures validation bits per byte on the held-out documents and writes `report.md` with the
configuration, the machine, the time of every stage, tokens seen, parameters, MFU, the loss curve and
samples. Any corpus can replace the default (`--corpus FILES`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.train.config import TrainConfig


@dataclass
class SpeedrunPreset:
    vocab_size: int
    depth: int
    seq_len: int
    batch_size: int
    minutes: float  # the training budget; tokenizer, shards and evaluation come on top
    lr: float
    warmup_steps: int
    max_steps: int  # the schedule's horizon: the time budget usually ends the run first


PRESETS = {
    # under 9 minutes in all on 2 CPU cores (8.5 of training, then the evaluation and the sample)
    "cpu": SpeedrunPreset(vocab_size=4096, depth=4, seq_len=256, batch_size=16, minutes=8.5, lr=3e-3,
                          warmup_steps=30, max_steps=700),
    # a single GPU: wider, longer, bfloat16
    "gpu": SpeedrunPreset(vocab_size=8192, depth=12, seq_len=1024, batch_size=32, minutes=30.0, lr=2e-3,
                          warmup_steps=200, max_steps=20000),
}  # fmt: skip

SPECIAL = "<|endoftext|>"


def default_corpus() -> list[Path]:
    base = Path(
        os.environ.get("LMFORGE_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
    )
    files = [base / "text" / "tinystories_val_subset.txt", base / "text" / "tinyshakespeare.txt"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(
            f"speedrun corpus not found: {', '.join(missing)}; set LMFORGE_DATA or pass --corpus"
        )
    return files


def train_tokenizer(corpus: list[Path], vocab_size: int, out: Path):
    """Byte-level BPE on the corpus (files joined into one training text)."""
    from lmforge.tokenizer import BPETokenizer, train_bpe

    joined = out / "tokenizer_corpus.txt"
    with open(joined, "w", encoding="utf-8") as f:
        for path in corpus:
            f.write(Path(path).read_text(encoding="utf-8"))
            f.write("\n\n")
    vocab, merges = train_bpe(joined, vocab_size, [SPECIAL], progress=False)
    joined.unlink()
    tok = BPETokenizer(vocab, merges, [SPECIAL])
    path = out / "tokenizer.json"
    tok.save(path)
    return path


def run_speedrun(out_dir: str | Path = "runs/speedrun", preset: str = "cpu", corpus: list[str] | None = None,
                 minutes: float | None = None, device: str = "auto", vocab_size: int | None = None,
                 depth: int | None = None) -> Path:  # fmt: skip
    """Run every stage; returns the path of report.md."""
    from lmforge.train.pretrain import run_pretrain

    if preset not in PRESETS:
        raise ValueError(f"unknown speedrun preset {preset!r}; available: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [Path(c) for c in corpus] if corpus else default_corpus()
    times: dict[str, float] = {}

    t = time.perf_counter()
    tok_path = train_tokenizer(files, vocab_size or p.vocab_size, out)
    times["tokenizer"] = time.perf_counter() - t

    cfg = TrainConfig(
        data=[str(f) for f in files], tokenizer=str(tok_path), shards_dir=str(out / "shards"),
        model="llama", depth=depth or p.depth, seq_len=p.seq_len, batch_size=p.batch_size, lr=p.lr, min_lr=p.lr / 10,
        warmup_steps=p.warmup_steps, max_steps=p.max_steps, max_minutes=minutes or p.minutes,
        schedule="wsd", eval_every=100, eval_batches=20, log_every=10, ckpt_every=0, keep_last=1,
        out_dir=str(out / "model"), resume=False, device=device,
        precision="bf16" if preset == "gpu" else "fp32", sample_prompt="Once upon a time", sample_tokens=80,
    )  # fmt: skip
    t = time.perf_counter()
    from lmforge.train.pretrain import prepare_shards

    prepare_shards(cfg)
    times["shards"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = run_pretrain(cfg, progress=True)
    times["training + evaluation"] = time.perf_counter() - t
    samples = [summary.get("sample", "")]
    report = write_report(out, cfg, summary, times, samples)
    return report


def write_report(out: Path, cfg: TrainConfig, summary: dict[str, Any], times: dict[str, float],
                 samples: list[str]) -> Path:  # fmt: skip
    metrics = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines() if x]
    last_speed = next((m for m in reversed(metrics) if "tokens_per_s" in m), {})
    steps = summary.get("step", 0)
    tokens = steps * cfg.batch_size * cfg.seq_len * cfg.grad_accum
    from lmforge.train.checkpoint import latest_checkpoint, load_checkpoint

    ckpt = latest_checkpoint(cfg.out_dir)
    n_params = sum(v.numel() for v in load_checkpoint(ckpt)["model"].values()) if ckpt else 0
    lines = [
        "# lmforge speedrun report",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
        + (f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        f"- corpus: {', '.join(Path(f).name for f in cfg.data)}; tokenizer: byte-level BPE, "
        f"{cfg.tokenizer and Path(cfg.tokenizer).name}",
        f"- model: Llama-style, depth {cfg.depth} (width {64 * (cfg.depth or 0)}), {n_params / 1e6:.2f}M parameters, "
        f"context {cfg.seq_len}",
        f"- training: {steps} steps × {cfg.batch_size} × {cfg.seq_len} = {tokens:,} tokens; {cfg.optimizer}, "
        f"lr {cfg.lr} ({cfg.schedule}), {cfg.precision}",
        f"- throughput: {last_speed.get('tokens_per_s', 0):,.0f} tokens/s, MFU {100 * last_speed.get('mfu', 0):.1f}%",
        f"- **validation: loss {summary.get('val_loss', float('nan')):.4f} nats/token, "
        f"{summary.get('val_bpb', float('nan')):.4f} bits per byte** (held-out documents)",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in times.items()],
        f"| total | {sum(times.values()):.1f} |",
        "",
        "![loss](model/loss.png)",
        "",
        "## Sample (temperature 0.8, top-k 50)",
        "",
        *[f"> {s.strip()}".replace("\n", "\n> ") for s in samples if s],
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(cfg.to_dict(), indent=1),
        "```",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
