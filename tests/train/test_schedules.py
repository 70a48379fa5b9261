"""Learning-rate schedules: values at the key steps, monotone pieces, equal to torch's schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

from lmforge.train.optim import AdamW, Muon
from lmforge.train.schedules import (
    constant_with_warmup,
    make_schedule,
    set_lr,
    warmup_cosine,
    warmup_stable_decay,
)

MAX, MIN, WARMUP, TOTAL = 1e-3, 1e-4, 10, 100


def torch_lrs(make_scheduler, steps: int) -> list[float]:
    """The lr torch's scheduler gives at steps 0 .. steps-1 (read before each optimizer step)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=MAX)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_key_steps():
    f = lambda s: warmup_cosine(s, MAX, MIN, WARMUP, TOTAL)  # noqa: E731
    assert f(0) == pytest.approx(MAX / WARMUP)  # the first step already moves
    assert f(WARMUP - 1) == pytest.approx(MAX) and f(WARMUP) == pytest.approx(MAX)
    assert f((WARMUP + TOTAL) // 2) == pytest.approx((MAX + MIN) / 2)  # half-way down the cosine
    assert f(TOTAL) == pytest.approx(MIN) and f(TOTAL + 500) == MIN  # and it stays there
    lrs = [f(s) for s in range(TOTAL + 20)]
    assert all(a < b for a, b in zip(lrs[:WARMUP], lrs[1:WARMUP]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[WARMUP:], lrs[WARMUP + 1 :]))  # then never rises
    no_warmup = MIN + (MAX - MIN) * (1 + math.cos(math.pi * 0.05)) / 2
    assert warmup_cosine(5, MAX, MIN, 0, TOTAL) == pytest.approx(no_warmup)


def test_cosine_equals_torch():
    ours = [warmup_cosine(s, MAX, MIN, WARMUP, TOTAL) for s in range(TOTAL + 1)]
    # LinearLR from 1/warmup to 1 over steps 0 .. warmup-1, then CosineAnnealingLR over the rest
    theirs = torch_lrs(lambda o: SequentialLR(o, [LinearLR(o, start_factor=1 / WARMUP, total_iters=WARMUP - 1),
                                                  CosineAnnealingLR(o, T_max=TOTAL - WARMUP, eta_min=MIN)],
                                              milestones=[WARMUP]), TOTAL + 1)  # fmt: skip
    assert ours == pytest.approx(theirs, rel=1e-9)
    # no warmup: CosineAnnealingLR alone (torch's cosine goes back up past T_max; ours stays at min_lr)
    ours = [warmup_cosine(s, MAX, MIN, 0, TOTAL) for s in range(TOTAL + 1)]
    theirs = torch_lrs(lambda o: CosineAnnealingLR(o, T_max=TOTAL, eta_min=MIN), TOTAL + 1)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_wsd_key_steps_and_shapes():
    f = lambda s, **kw: warmup_stable_decay(s, MAX, MIN, WARMUP, TOTAL, decay_fraction=0.2, **kw)  # noqa: E731
    assert f(0) == pytest.approx(MAX / WARMUP) and f(WARMUP - 1) == pytest.approx(MAX)
    assert all(f(s) == MAX for s in range(WARMUP, 81))  # stable until the last 20%
    assert f(90) == pytest.approx((MAX + MIN) / 2)  # linear: half-way at the decay's middle
    assert f(90, shape="1-sqrt") == pytest.approx(MAX - (MAX - MIN) * math.sqrt(0.5))
    assert f(TOTAL) == MIN and f(TOTAL + 7) == MIN
    for shape in ("linear", "1-sqrt"):
        lrs = [f(s, shape=shape) for s in range(WARMUP, TOTAL + 5)]
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # a decay longer than the run after warmup starts at the end of warmup, never inside it
    assert warmup_stable_decay(WARMUP, MAX, MIN, WARMUP, 20, decay_fraction=0.9) == MAX
    assert warmup_stable_decay(15, MAX, MIN, WARMUP, 20, decay_fraction=0.9) == pytest.approx((MAX + MIN) / 2)
    with pytest.raises(ValueError, match="shape"):
        f(50, shape="cosine")


def test_wsd_equals_torch():
    ours = [warmup_stable_decay(s, MAX, MIN, WARMUP, TOTAL, decay_fraction=0.2) for s in range(TOTAL + 1)]
    theirs = torch_lrs(lambda o: SequentialLR(o, [LinearLR(o, start_factor=1 / WARMUP, total_iters=WARMUP - 1),
                                                  ConstantLR(o, factor=1.0, total_iters=0),
                                                  LinearLR(o, start_factor=1.0, end_factor=MIN / MAX, total_iters=20)],
                                              milestones=[WARMUP, TOTAL - 20]), TOTAL + 1)  # fmt: skip
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_constant_with_warmup():
    lrs = [constant_with_warmup(s, MAX, 4) for s in range(6)]
    assert lrs == pytest.approx([MAX / 4, MAX / 2, 3 * MAX / 4, MAX, MAX, MAX])
    assert constant_with_warmup(0, MAX, 0) == MAX


def test_make_schedule():
    kw = dict(max_lr=MAX, min_lr=MIN, warmup=WARMUP, total=TOTAL)
    assert make_schedule("cosine", **kw)(55) == warmup_cosine(55, **kw)
    assert make_schedule("warmup_cosine", **kw)(55) == warmup_cosine(55, **kw)
    wsd = make_schedule("wsd", **kw, decay_fraction=0.5)
    assert wsd(60) == warmup_stable_decay(60, **kw, decay_fraction=0.5)
    assert make_schedule("constant", **kw)(TOTAL * 2) == MAX  # min_lr and total: not its business
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", **kw)
    with pytest.raises(TypeError, match="warmpu"):
        make_schedule("cosine", max_lr=MAX, min_lr=MIN, warmpu=WARMUP, total=TOTAL)
    with pytest.raises(ValueError, match="≥ 0"):  # checked when built, not at the first step
        make_schedule("cosine", max_lr=MAX, min_lr=MIN, warmup=-1, total=TOTAL)


def test_set_lr_scales_groups():
    w = torch.nn.Parameter(torch.zeros(4, 4))
    b = torch.nn.Parameter(torch.zeros(4))
    muon = Muon([{"params": [w], "lr_scale": 20.0}], lr=0.02)
    adamw = AdamW([{"params": [b]}], lr=1e-3)
    schedule = make_schedule("cosine", max_lr=1e-3, min_lr=1e-4, warmup=2, total=10)
    set_lr([muon, adamw], schedule(0))
    assert adamw.param_groups[0]["lr"] == pytest.approx(5e-4)  # warmup step 0: half of 1e-3
    assert muon.param_groups[0]["lr"] == pytest.approx(1e-2)  # × lr_scale 20
    set_lr(adamw, 3e-4)  # one optimizer alone is fine too
    assert adamw.param_groups[0]["lr"] == 3e-4
