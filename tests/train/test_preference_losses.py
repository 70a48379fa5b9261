"""Sequence log-probabilities, Bradley–Terry and DPO (sigmoid, cDPO, IPO, hinge) on hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.preference import bradley_terry_loss, dpo_loss, sequence_logprobs, shifted


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # −log σ(−x)


# --- sequence log-probabilities -----------------------------------------------------------------------

# logits (0, ln 2, ln 3) are probabilities (1/6, 2/6, 3/6): every log-probability is known by hand
ROW = [0.0, math.log(2), math.log(3)]


def test_sequence_logprobs_sums_the_masked_labels():
    logits = torch.tensor([[ROW, ROW, ROW], [ROW, ROW, ROW]])  # (2, 3, 3)
    labels = torch.tensor([[2, 1, 0], [0, 0, 2]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    got = sequence_logprobs(logits, labels, mask)
    expected = [math.log(3 / 6) + math.log(2 / 6) + math.log(1 / 6), math.log(1 / 6) + math.log(3 / 6)]
    torch.testing.assert_close(got, torch.tensor(expected))
    avg = sequence_logprobs(logits, labels, mask, average=True)
    torch.testing.assert_close(avg, torch.tensor([expected[0] / 3, expected[1] / 2]))


def test_default_mask_is_labels_not_minus_100_and_equals_log_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen) * 4
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[0, :2] = -100  # a prompt
    got = sequence_logprobs(logits, labels)
    ref = torch.log_softmax(logits, -1)
    expected = [
        sum(ref[b, i, labels[b, i]].item() for i in range(5) if labels[b, i] != -100) for b in range(2)
    ]
    torch.testing.assert_close(got, torch.tensor(expected))


def test_bf16_logits_are_scored_in_float32():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(1, 64, 50, generator=gen) * 3).bfloat16()
    labels = torch.randint(0, 50, (1, 64), generator=gen)
    got = sequence_logprobs(logits, labels)
    assert got.dtype == torch.float32
    expected = torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None]).sum()
    assert abs(got.item() - expected.item()) < 1e-3


def test_shifted_aligns_logits_with_the_next_token():
    # a "model" whose logits at position t put all mass on input_ids[t + 1]: log-prob 0 after shifting
    ids = torch.tensor([[5, 1, 3, 2]])
    logits = torch.full((1, 4, 6), -1e4)
    for i in range(3):
        logits[0, i, ids[0, i + 1]] = 0.0
    loss_mask = torch.tensor([[0, 0, 1, 1]])  # the prompt is ids 5, 1; the response 3, 2
    lg, lb, m = shifted(logits, ids, loss_mask)
    assert lg.shape == (1, 3, 6) and lb.tolist() == [[1, 3, 2]] and m.tolist() == [[0, 1, 1]]
    assert sequence_logprobs(lg, lb, m).item() == pytest.approx(0.0, abs=1e-6)
    assert shifted(logits, ids)[2] is None
    # unshifted, the same logits score the response tokens as impossible
    assert sequence_logprobs(logits, ids, loss_mask).item() < -1e3


# --- Bradley–Terry ------------------------------------------------------------------------------------


def test_bradley_terry_margin_one_gives_log_one_plus_e_minus_one():
    loss, stats = bradley_terry_loss(t(1.0), t(0.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert stats["accuracy"].item() == 1.0 and stats["margin"].item() == pytest.approx(1.0)


def test_bradley_terry_mean_accuracy_and_llama2_margin():
    loss, stats = bradley_terry_loss(t(2.0, 0.0), t(0.0, 1.0))
    assert loss.item() == pytest.approx((softplus(-2.0) + softplus(1.0)) / 2)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == pytest.approx(0.5)
    # Llama 2: −log σ(r_c − r_r − m); diff 2 with margin 1 is diff 1 without
    loss_m, stats_m = bradley_terry_loss(t(2.0), t(0.0), margin=1.0)
    assert loss_m.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert stats_m["margin"].item() == pytest.approx(2.0)  # the reported gap ignores the required margin
    loss_t, _ = bradley_terry_loss(t(2.0, 2.0), t(0.0, 0.0), margin=t(1.0, 3.0))
    assert loss_t.item() == pytest.approx((softplus(-1.0) + softplus(1.0)) / 2)


def test_bradley_terry_gradient_separates_the_rewards():
    rc, rr = t(0.3).requires_grad_(), t(0.3).requires_grad_()
    bradley_terry_loss(rc, rr)[0].backward()
    assert rc.grad.item() == pytest.approx(-0.5) and rr.grad.item() == pytest.approx(0.5)  # −σ(0), +σ(0)


# --- DPO ------------------------------------------------------------------------------------------------


def test_dpo_zero_logits_is_ln2_and_stats():
    # policy and reference agree on every log-ratio: h = 0, the loss is −log σ(0) = ln 2
    loss, stats = dpo_loss(t(-5.0, -3.0), t(-7.0, -4.0), t(-5.0, -3.0), t(-7.0, -4.0), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["reward_accuracy"].item() == 0.0  # ties are not wins
    assert stats["chosen_rewards"].item() == 0.0 and stats["reward_margin"].item() == 0.0


def test_dpo_sigmoid_value_and_implicit_rewards():
    # chosen log-ratio +1, rejected −1: h = 2; beta 0.5 makes beta·h = 1
    pc, pr, rc, rr = t(-4.0), t(-9.0), t(-5.0), t(-8.0)
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(softplus(-1.0))
    assert stats["chosen_rewards"].item() == pytest.approx(0.5)
    assert stats["rejected_rewards"].item() == pytest.approx(-0.5)
    assert stats["reward_margin"].item() == pytest.approx(1.0)
    assert stats["reward_accuracy"].item() == 1.0


def test_dpo_label_smoothing_is_conservative_dpo():
    pc, pr, rc, rr = t(-4.0), t(-9.0), t(-5.0), t(-8.0)  # beta·h = 1 at beta 0.5
    eps = 0.1
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=eps)
    expected = (1 - eps) * softplus(-1.0) + eps * softplus(1.0)  # −(1−ε) log σ(1) − ε log σ(−1)
    assert loss.item() == pytest.approx(expected)


def test_ipo_squared_distance_to_one_over_two_beta():
    pc, pr, rc, rr = t(-4.0, -1.0), t(-9.0, -1.0), t(-5.0, -1.0), t(-8.0, -1.0)  # h = 2 and h = 0
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(((2 - 5) ** 2 + (0 - 5) ** 2) / 2)  # 1/(2·0.1) = 5, no beta on h
    # at h = 1/(2β) the loss is exactly zero
    loss0, _ = dpo_loss(t(0.0), t(-0.0), t(-2.5), t(2.5), beta=0.1, loss_type="ipo")
    assert loss0.item() == pytest.approx(0.0)


def test_hinge():
    # h = 2, 1, −1 at beta 0.5: relu(1 − 1) = 0, relu(1 − 0.5) = 0.5, relu(1 + 0.5) = 1.5
    pc, pr, rc, rr = t(-4.0, -4.0, -6.0), t(-9.0, -8.0, -5.0), t(-5.0, -5.0, -5.0), t(-8.0, -8.0, -5.0)
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")
    assert loss.item() == pytest.approx((0.0 + 0.5 + 1.5) / 3)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = t(-5.0).requires_grad_(), t(-6.0).requires_grad_()
    rc, rr = t(-5.0).requires_grad_(), t(-6.0).requires_grad_()
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    # dL/dpc = −β σ(−βh) = −0.1/2 at h = 0: gradient descent raises log π(chosen), lowers log π(rejected)
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)
    assert rc.grad is None and rr.grad is None  # the reference is a constant
    # one SGD step on the log-probabilities lowers the loss
    with torch.no_grad():
        loss2, _ = dpo_loss(pc - pc.grad, pr - pr.grad, rc, rr, beta=0.1)
    assert loss2.item() < loss.item()


def test_dpo_end_to_end_through_sequence_logprobs():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=gen, requires_grad=True)
    labels = torch.randint(0, 7, (2, 4), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])
    logps = sequence_logprobs(logits, labels, mask)  # row 0 chosen, row 1 rejected
    ref = logps.detach()
    loss, _ = dpo_loss(logps[:1], logps[1:], ref[:1], ref[1:])
    loss.backward()
    assert logits.grad[:, 0].abs().max() == 0 and logits.grad[1, 3].abs().max() == 0  # masked: no gradient
    # the chosen label's logit goes up under gradient descent (negative gradient)
    assert (logits.grad[0, 1:].gather(-1, labels[0, 1:, None]) < 0).all()


def test_validation():
    ok = t(-1.0, -2.0)
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(ok, t(-1.0), ok, ok)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(ok, ok, ok, ok, beta=0.0)
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge"):
        dpo_loss(ok, ok, ok, ok, loss_type="kto")
    with pytest.raises(ValueError, match="NaN"):
        dpo_loss(ok, ok, t(float("nan"), 0.0), ok)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(ok, ok, ok, ok, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(ok, ok, ok, ok, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="NaN"):
        bradley_terry_loss(t(float("nan")), t(0.0))
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(ok, t(0.0))
    with pytest.raises(ValueError, match="labels"):
        sequence_logprobs(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long))
