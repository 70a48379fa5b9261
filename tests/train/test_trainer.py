"""The training loop: exact resume, divergence stops, logs, and a tiny model that memorises its data."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.checkpoint import checkpoints
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer, TrainingDiverged, flops_per_token


class WindowLoader:
    """Random windows of one token stream, with a saveable position (a stand-in for lmforge.data's)."""

    def __init__(self, tokens: torch.Tensor, batch: int, seq: int, seed: int):
        self.tokens, self.batch, self.seq = tokens, batch, seq
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self):
        starts = torch.randint(0, len(self.tokens) - self.seq - 1, (self.batch,), generator=self.gen)
        rows = torch.stack([self.tokens[s : s + self.seq + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=32))


def make_trainer(tmp_path, steps: int, lr: float = 3e-3, **kw) -> Trainer:
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=steps, seq_len=16, batch_size=4, eval_every=5,
                      eval_batches=2, log_every=1, ckpt_every=3, keep_last=2, **kw)  # fmt: skip
    model = tiny_model()
    tokens = torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    return Trainer(cfg, model, [opt], lambda step: lr, WindowLoader(tokens, 4, 16, 2),
                   WindowLoader(tokens, 4, 16, 3))  # fmt: skip


def losses(history):
    return [r["loss"] for r in history if "loss" in r]


def test_a_resumed_run_repeats_the_uninterrupted_one_bit_for_bit(tmp_path):
    whole = make_trainer(tmp_path / "whole", 10)
    whole.fit(progress=False)
    first = make_trainer(tmp_path / "split", 10)
    first.cfg.max_steps = 6  # stop after step 6 (a checkpoint is written at the stop)
    first.fit(progress=False)
    second = make_trainer(tmp_path / "split", 10)  # a new process: fresh model, optimizer and loader
    assert second.resume()
    assert second.step == 6
    second.fit(progress=False)
    assert losses(second.history) == losses(whole.history)  # exactly equal floats, all 10 steps
    for a, b in zip(whole.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [p.name for p in checkpoints(tmp_path / "split")] == ["step_0000009.pt", "step_0000010.pt"]


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 4 rows give the update of one batch of 8 rows (the loss is a mean per token)."""
    big = make_trainer(tmp_path / "a", 1)
    big.train_loader.batch = 8
    small = make_trainer(tmp_path / "b", 1, grad_accum=2)
    big.train_step(), small.train_step()
    for a, b in zip(big.model.parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_non_finite_loss_stops_before_saving(tmp_path):
    t = make_trainer(tmp_path, 8)
    t.cfg.max_steps = 3
    t.fit(progress=False)  # a good checkpoint at step 3
    t.cfg.max_steps = 8
    with torch.no_grad():
        t.model.embed.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="not finite.*last good state"):
        t.fit(progress=False)
    assert [p.name for p in checkpoints(tmp_path)][-1] == "step_0000003.pt"


def test_logs_metrics_plot_and_mfu(tmp_path):
    t = make_trainer(tmp_path, 5)
    summary = t.fit(progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in records)
    assert "val_loss" in records[-1] and summary["val_loss"] == records[-1]["val_loss"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    cfg = t.model.config
    n = sum(p.numel() for p in t.model.parameters())
    assert flops_per_token(cfg, n, 16) == 6 * n + 12 * 2 * 16 * 32


def test_a_tiny_model_memorises_a_tiny_corpus(tmp_path):
    """Overfitting sanity: one short sequence, seen over and over, is learned (loss near 0)."""
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=150, seq_len=16, batch_size=4, eval_every=0,
                      log_every=50, ckpt_every=0)  # fmt: skip
    model = tiny_model()
    tokens = torch.arange(17).repeat(8) % 64  # 0..16 repeated: fully predictable
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    t = Trainer(cfg, model, [opt], lambda s: 1e-2, WindowLoader(tokens, 4, 16, 0))
    t.fit(progress=False)
    assert losses(t.history)[-1] < 0.05, losses(t.history)[-5:]


def test_a_time_budget_moves_the_schedule_by_time(tmp_path):
    """With max_minutes, the schedule advances by the larger of step / max_steps and elapsed / budget, so
    a run cut short by time still reaches its decay."""
    seen: list[int] = []
    t = make_trainer(tmp_path, 10_000, max_minutes=0.02)  # 1.2 s of a 10,000-step horizon
    t.schedule = lambda s: seen.append(s) or 1e-3
    t.fit(progress=False)
    assert t.step < 1000 and seen[-1] > 5000  # the horizon was reached by time, not steps
    assert seen == sorted(seen)


def test_init_weights_start_a_model_at_chance():
    """GPT-2's initialisation: the first loss is ≈ ln V (every token equally likely), the residual
    projections are scaled down by √(2 · layers), and norm gains are 1."""
    import math

    ids = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))

    def first_loss(model) -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(
                model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()
            ).item()

    assert first_loss(tiny_model()) > math.log(64) + 5  # PyTorch's defaults: N(0, 1) embeddings, tied head
    model = tiny_model().init_weights()
    assert abs(first_loss(model) - math.log(64)) < 1.0
    assert abs(model.layers[0].attn.o_proj.weight.std().item() - 0.02 / math.sqrt(4)) < 0.002
    assert abs(model.layers[0].attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))


def test_activation_checkpointing_and_bf16_autocast(tmp_path):
    """Recomputing blocks in backward changes no number; bf16 autocast trains (loss close to fp32's)."""
    from lmforge.train.pretrain import _checkpoint_blocks

    plain, ckpt = make_trainer(tmp_path / "a", 2), make_trainer(tmp_path / "b", 2)
    _checkpoint_blocks(ckpt.model)
    for _ in range(2):
        assert plain.train_step().loss == ckpt.train_step().loss
    for a, b in zip(plain.model.parameters(), ckpt.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    bf16 = make_trainer(tmp_path / "c", 2, precision="bf16")
    fp32 = make_trainer(tmp_path / "d", 2)
    assert abs(bf16.train_step().loss - fp32.train_step().loss) < 0.05
