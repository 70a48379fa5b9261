"""The pretraining loop: next-token prediction with cross-entropy, the way nanoGPT and nanochat do it.

One update (`train_step`):

    for each of grad_accum micro-batches:        # a large batch in small pieces: same gradient, less memory
        loss = cross_entropy(model(x), y) / grad_accum      (under autocast when precision is bf16/fp16)
        loss.backward()                            # gradients add up across micro-batches
    clip the global gradient norm to grad_clip    # one bad batch cannot throw the weights far
    lr = schedule(step); optimizer.step(); zero the gradients

Around it: periodic validation (loss and bits per byte, which does not depend on the tokenizer), sample
text, throughput (tokens/s) and MFU (model FLOPs per second / the machine's measured peak), JSONL
metrics + TensorBoard + a loss-curve PNG, atomic checkpoints with exact resume (checkpoint.py), and a
stop with a clear message at the first non-finite loss or gradient, before anything is saved, so the
last checkpoint is the last good state. Distributed data parallel runs come from `torchrun`
(distributed.py); every process runs this same loop on its own rows of the batch.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lmforge.train.config import TrainConfig
from lmforge.train.optim import clip_grad_norm_


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


# ------------------------------------------------------------------------------------------ the model


def model_config(cfg: TrainConfig, vocab_size: int):
    """The ModelConfig of a run: the preset, then nanochat's depth dial, then explicit overrides.

    depth d gives n_layers = d and width 64·d with heads of 64 (so a model grows in depth and width
    together, one number to sweep); the gated MLP is 8/3 of the width, rounded to a multiple of 64.
    """
    from lmforge.model.presets import preset

    over: dict[str, Any] = {"vocab_size": vocab_size, "max_seq_len": cfg.seq_len}
    if cfg.depth is not None:
        if cfg.depth < 1:
            raise ValueError(f"depth must be >= 1, got {cfg.depth}")
        dim = 64 * cfg.depth
        over.update(n_layers=cfg.depth, dim=dim, n_heads=cfg.depth, n_kv_heads=cfg.depth, head_dim=64,
                    ffn_dim=64 * math.ceil(8 * dim / 3 / 64))  # fmt: skip
    over.update(cfg.model_overrides)
    if cfg.objective == "mlm":
        over["causal"] = False  # an encoder: every token sees both sides
    try:
        return preset(cfg.model, **over)
    except TypeError as e:
        raise ValueError(f"model_overrides: {e}") from None


def flops_per_token(model_cfg, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward 2, backward 4; Kaplan et al. 2020) plus attention's
    score and value products, 12 · layers · seq_len · width (PaLM's MFU accounting, Chowdhery et al. 2022)."""
    return 6 * n_params + 12 * model_cfg.n_layers * seq_len * model_cfg.n_heads * model_cfg.head_dim


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """The machine's matmul FLOP/s in `dtype`: the best of a few n×n products (the MFU denominator)."""
    # its own generator: measuring must not move the global RNG that masks are drawn from (exact resume)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    best = math.inf
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------------ losses


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its labels: what the model's forward takes (input_ids; position_ids and
    segment_ids of packed rows; decoder_input_ids of an encoder–decoder)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def lm_loss(model, batch: dict[str, torch.Tensor], fused: bool = True) -> torch.Tensor:
    """Mean cross-entropy of the model's logits against the batch's labels (-100 = not scored).

    For our decoder with a plain output head (tied or an nn.Linear: not one with an adapter or quantized)
    the head and the loss run fused (lmforge.train.losses.linear_cross_entropy): the same loss and
    gradients without the (B, T, V) logits in memory. fused=False, or any other model, computes the logits.
    """
    from lmforge.model.transformer import Transformer
    from lmforge.train.losses import linear_cross_entropy

    head = getattr(model, "lm_head", None)
    plain = type(getattr(model, "embed", None)) is torch.nn.Embedding if head is None else (
        type(head) is torch.nn.Linear and head.bias is None)  # fmt: skip
    # type(), not isinstance: FSDP2 subclasses the model and unshards its weights in forward hooks
    if fused and type(model) is Transformer and plain:
        h = model.norm(model.hidden_states(**model_inputs(batch)))  # (B, T, D)
        weight = model.embed.weight if head is None else head.weight  # (V, D)
        loss = linear_cross_entropy(
            h.flatten(0, 1), weight, batch["labels"].flatten(), model.config.final_softcap
        )
    else:
        logits = model(**model_inputs(batch))  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    aux = model.aux_loss() if hasattr(model, "aux_loss") else None
    if aux is not None:
        loss = loss + model.config.router_aux_loss_coef * aux
    return loss


# ------------------------------------------------------------------------------------------ the trainer


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    seconds: float


class Trainer:
    """Owns the model, optimizers, data and logs of one run; `fit()` trains to cfg.max_steps."""

    def __init__(self, cfg: TrainConfig, model, optimizers, schedule, train_loader, val_loader=None,
                 tokenizer=None, batch_fn=None, world=None) -> None:  # fmt: skip
        self.cfg, self.model, self.optimizers, self.schedule = cfg, model, optimizers, schedule
        self.train_loader, self.val_loader, self.tokenizer = train_loader, val_loader, tokenizer
        # batch_fn: the loader's tensors → the model's batch (the objective: masking, span corruption, ...)
        self.batch_fn = batch_fn or (lambda x, y: {"input_ids": x, "labels": y})
        self.world = world  # lmforge.train.distributed.World, or None for one process
        self.device = next(model.parameters()).device
        self.step = 0
        self.out_dir = Path(cfg.out_dir)
        self.history: list[dict[str, Any]] = []
        self.is_main = world is None or world.rank == 0
        self._writer = None
        self.autocast = self._autocast()
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self._fit_start: float | None = None  # wall clock of this fit(); with _seconds_before: time trained
        self._seconds_before = 0.0

    # -- precision
    def _autocast(self):
        cfg = self.cfg
        if cfg.precision == "fp32":
            return nullcontext
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a GPU (loss scaling); on a CPU use bf16")
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
        return lambda: torch.autocast(self.device.type, dtype=dtype)

    # -- one update
    def train_step(self) -> StepResult:
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        lr = self.schedule(self._schedule_step())
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
        total, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            raw = self.train_loader.next_batch()  # (x, y) or (x, y, segments, positions)
            batch = {k: v.to(self.device) for k, v in self.batch_fn(*raw).items()}
            # DDP: synchronize gradients only on the last micro-batch (the others just accumulate)
            sync = (
                nullcontext()
                if micro == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
                else model.no_sync()
            )
            with sync:
                with self.autocast():
                    loss = lm_loss(model, batch) / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
            tokens += raw[0].numel()  # tokens read from the data (throughput, and D of a scaling law)
        if self.scaler:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        params = [p for p in model.parameters() if p.grad is not None]
        # ours (lmforge.train.optim) is the formula written out; FSDP's sharded gradients need torch's,
        # which sums the shards' squares across processes. grad_clip 0 only measures the norm.
        fsdp = self.world is not None and cfg.parallel == "fsdp"
        clip = torch.nn.utils.clip_grad_norm_ if fsdp else clip_grad_norm_
        norm = float(clip(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        if not math.isfinite(total) or (not math.isfinite(norm) and self.scaler is None):
            raise TrainingDiverged(
                f"step {self.step}: loss {total} / gradient norm {norm} is not finite; stopped without saving, "
                f"so the last checkpoint in {self.out_dir} is the last good state (try a lower lr, "
                "a longer warmup, gradient clipping, or bf16 instead of fp16)"
            )
        for opt in self.optimizers:
            if self.scaler:
                self.scaler.step(opt)
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.update()
        self.step += 1
        return StepResult(total, norm, lr, tokens, time.perf_counter() - t0)

    def _schedule_step(self) -> int:
        """The step the schedule sees. With a time budget (max_minutes) the run may end long before
        max_steps, so the schedule advances by whichever is further along, steps or time: the decay of a
        cosine or WSD schedule then happens within the budget. (Time is not reproducible: such runs resume
        exactly only in their steps, not their learning rates.)"""
        cfg = self.cfg
        if cfg.max_minutes is None or self._fit_start is None:
            return self.step
        elapsed = self._seconds_before + time.perf_counter() - self._fit_start
        return max(self.step, int(elapsed / (60 * cfg.max_minutes) * cfg.max_steps))

    # -- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss over cfg.eval_batches batches, and bits per byte when the tokenizer is known:
        bpb = Σ loss over tokens / (ln 2 · Σ bytes of those tokens) — comparable across tokenizers."""
        if self.val_loader is None:
            return {}
        self.model.eval()
        state = self.val_loader.state_dict()  # every evaluation sees the same batches
        # ... and the same masks (MLM, span corruption draw from torch's RNG): a fixed seed here, and the
        # training RNG put back afterwards, so evaluating does not change the training run (exact resume)
        rng = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed + 2)
        nats, count, nbytes = 0.0, 0, 0
        # bits per byte only for next-token prediction: a masked or span target is not "the next byte"
        table = self._token_bytes() if self.cfg.objective == "clm" else None
        for _ in range(self.cfg.eval_batches):
            raw = self.val_loader.next_batch()
            batch = {k: v.to(self.device) for k, v in self.batch_fn(*raw).items()}
            with self.autocast():
                logits = self.model(**model_inputs(batch))
            labels = batch["labels"].flatten()
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels, ignore_index=-100, reduction="none")
            keep = labels != -100
            nats += float(loss[keep].sum())
            count += int(keep.sum())
            if table is not None:
                nbytes += int(table[labels[keep].cpu()].sum())
        self.val_loader.load_state_dict(state)
        torch.set_rng_state(rng)
        self.model.train()
        if self.world is not None:
            nats, count, nbytes = self.world.all_reduce_sum([nats, count, nbytes])
        out = {"val_loss": nats / max(count, 1)}
        if table is not None and nbytes:
            out["val_bpb"] = nats / (math.log(2) * nbytes)
        return out

    def _token_bytes(self) -> torch.Tensor | None:
        """Bytes of text per token id (special tokens count 0, as nanochat does)."""
        if self.tokenizer is None:
            return None
        if getattr(self, "_table", None) is None:
            tok = self.tokenizer
            special = set(getattr(tok, "special_tokens", {}) or {})
            special_ids = {tok.token_to_id(s) for s in special} if special else set()
            vocab = self.model.config.vocab_size
            sizes = []
            for i in range(vocab):
                try:
                    sizes.append(0 if i in special_ids else len(tok.decode_bytes([i])))
                except Exception:  # ids past the tokenizer's vocabulary (a padded embedding)
                    sizes.append(0)
            self._table = torch.tensor(sizes, dtype=torch.long)
        return self._table

    def sample(self, max_tokens: int | None = None) -> str:
        """Greedy-free sample text from cfg.sample_prompt (temperature 0.8, seed fixed: comparable runs)."""
        if self.tokenizer is None or not self.model.config.causal:
            return ""
        from lmforge.infer.generate import stream_ids
        from lmforge.infer.sampling import SamplingParams

        tok = self.tokenizer
        ids = tok.encode(self.cfg.sample_prompt) if self.cfg.sample_prompt else []
        if not ids:
            start = getattr(tok, "bos_id", None)
            ids = [start if start is not None else getattr(tok, "eos_id", None) or 0]
        ids = ids[-(self.cfg.seq_len - 1) :]
        n = min(max_tokens or self.cfg.sample_tokens, self.cfg.seq_len - len(ids))
        model = self.model.module if hasattr(self.model, "module") else self.model
        model.eval()
        rng = torch.get_rng_state()  # sampling must not disturb the training RNG (exact resume)
        out = list(stream_ids(model, torch.tensor([ids], device=self.device), n,
                              SamplingParams(temperature=0.8, top_k=50, seed=0)))  # fmt: skip
        torch.set_rng_state(rng)
        model.train()
        return tok.decode(ids + out)

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        model = self.model.module if hasattr(self.model, "module") else self.model
        return {
            "step": self.step,
            "model": model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "train_loader": self.train_loader.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "model_config": model.config.to_dict(),
            "history": self.history,
            "seconds": self._seconds_before
            + (time.perf_counter() - self._fit_start if self._fit_start else 0.0),
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
        }

    def save(self) -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(self.out_dir, self.step, self.state_dict(), self.cfg.keep_last)

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore the latest checkpoint of out_dir (or `path`); False when there is none."""
        path = path or latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = load_checkpoint(path)
        model = self.model.module if hasattr(self.model, "module") else self.model
        load_model_state(model, state["model"], path)
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"{path}: saved with {len(state['optimizers'])} optimizer(s), this run has "
                             f"{len(self.optimizers)} (another --optimizer?)")  # fmt: skip
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        self.train_loader.load_state_dict(state["train_loader"])
        set_rng_state(state["rng"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self._seconds_before = float(state.get("seconds", 0.0))
        return True

    # -- logs
    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])
            writer.flush()

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL and the PNG still record everything
                self._writer = False
                return None
            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer or None

    def plot(self) -> Path | None:
        """The loss curve (train and validation) as out_dir/loss.png."""
        if not self.is_main or not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        train = [(r["step"], r["loss"]) for r in self.history if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in self.history if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), label="train", lw=1)
        if val:
            ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.out_dir / "loss.png"
        tmp = path.with_name("loss.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        return path

    # -- the run
    def fit(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        model = self.model.module if hasattr(self.model, "module") else self.model
        n_params = sum(p.numel() for p in model.parameters())
        fpt = flops_per_token(model.config, n_params, cfg.seq_len)
        peak = measure_peak_flops(self.device, torch.bfloat16 if cfg.precision == "bf16" else torch.float32)
        world = 1 if self.world is None else self.world.size
        if self.is_main:
            print(f"model: {n_params / 1e6:.2f}M parameters; {fpt / 1e6:.1f} MFLOP per token; "
                  f"measured peak {peak / 1e9:.1f} GFLOP/s per process ({cfg.precision})", flush=True)  # fmt: skip
        self.model.train()
        start, t_start = self.step, time.perf_counter()
        self._fit_start = t_start
        bar = _progress(cfg.max_steps, self.step, progress and self.is_main)
        last: dict[str, Any] = {}
        tokens_window, time_window = 0, 0.0
        while self.step < cfg.max_steps:
            r = self.train_step()
            tokens_window += r.tokens * world
            time_window += r.seconds
            record: dict[str, Any] = {"step": self.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm}
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                tps = tokens_window / max(time_window, 1e-9)
                record.update(tokens_per_s=tps, mfu=tps / world * fpt / peak)
                tokens_window, time_window = 0, 0.0
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                record.update(self.evaluate())
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.is_main:
                record["sample"] = self.sample()
            self.log(record)
            last = record
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{r.loss:.3f}",
                    **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}),
                )
            if "val_loss" in record:
                self.plot()
            out_of_time = (
                cfg.max_minutes is not None and (time.perf_counter() - t_start) / 60 >= cfg.max_minutes
            )
            if (
                (cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                or self.step == cfg.max_steps
                or out_of_time
            ):
                self.save()
            if out_of_time:
                break
        if bar is not None:
            bar.close()
        if "val_loss" not in last and self.val_loader is not None and self.step > start:
            last = {**last, **self.evaluate()}
        self.plot()
        self._seconds_before += time.perf_counter() - t_start
        self._fit_start = None
        return {"step": self.step, "seconds": self._seconds_before, **last}


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
