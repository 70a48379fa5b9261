"""PPO-RLHF and GRPO pieces on hand-computed cases: KL estimators, rewards, GAE, whitening, the losses."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.rl import (
    gae,
    grpo_advantages,
    grpo_loss,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_rewards,
    value_loss,
    whiten,
)

LN2 = math.log(2)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- KL estimators ---------------------------------------------------------------------------------------


def test_kl_estimators_at_log_ratio_ln2():
    lp, ref = t([LN2, -LN2]), t([0.0, 0.0])  # π/π_ref = 2 and 1/2
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), t([LN2, -LN2]))
    torch.testing.assert_close(kl_penalty(lp, ref, "k2"), t([LN2**2 / 2, LN2**2 / 2]))
    # k3 = π_ref/π − 1 + log(π/π_ref)
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), t([0.5 - 1 + LN2, 2 - 1 - LN2]))
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_kl_policy_to_reference():
    # exact expectation over a 3-token vocabulary, tokens drawn from π: E_π[k] = Σ_x π(x) k(x)
    p, q = [0.7, 0.2, 0.1], [0.4, 0.4, 0.2]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    lp, ref = torch.tensor([math.log(x) for x in p]), torch.tensor([math.log(x) for x in q])
    for kind in ("k1", "k3"):
        expectation = sum(pi * k for pi, k in zip(p, kl_penalty(lp, ref, kind).tolist()))
        assert expectation == pytest.approx(kl, abs=1e-6)


# --- per-token rewards -------------------------------------------------------------------------------------


def test_ppo_rewards_kl_everywhere_score_on_the_last_valid_token():
    lp = t([LN2, 0.0, 0.0, 9.0], [0.0, LN2, 5.0, 5.0])
    ref = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = ppo_rewards(t(3.0, -1.0), lp, ref, mask, kl_coef=0.1)
    expected = t([-0.1 * LN2, 0.0, 3.0, 0.0], [0.0, -0.1 * LN2 - 1.0, 0.0, 0.0])
    torch.testing.assert_close(got, expected)
    # a mask with a hole: the score still goes to the last valid token
    holed = ppo_rewards(t(2.0), torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([[1, 0, 1, 0]]), 0.1)
    torch.testing.assert_close(holed, t([0.0, 0.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="no valid tokens"):
        ppo_rewards(t(1.0, 1.0), lp, ref, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        ppo_rewards(t(float("nan"), 1.0), lp, ref, mask, 0.1)


# --- GAE ------------------------------------------------------------------------------------------------------

# rewards (1, 0, 2), values (0.5, 0.2, 0.4), γ = 0.9, λ = 0.8, by hand:
#   δ2 = 2 + 0 − 0.4 = 1.6                   A2 = 1.6
#   δ1 = 0 + 0.9·0.4 − 0.2 = 0.16            A1 = 0.16 + 0.72·1.6 = 1.312
#   δ0 = 1 + 0.9·0.2 − 0.5 = 0.68            A0 = 0.68 + 0.72·1.312 = 1.62464
HAND_ADV = [1.62464, 1.312, 1.6]
HAND_RET = [1.62464 + 0.5, 1.312 + 0.2, 1.6 + 0.4]


def test_gae_three_steps_by_hand():
    adv, ret = gae(t([1.0, 0.0, 2.0]), t([0.5, 0.2, 0.4]), torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t(HAND_ADV))
    torch.testing.assert_close(ret, t(HAND_RET))


def test_gae_padding_contributes_nothing():
    # the same response, right-padded with garbage rewards and values: the value after the end is 0
    rewards = t([1.0, 0.0, 2.0, 7.0, 7.0], [5.0, 0.0, 0.0, 0.0, 0.0])
    values = t([0.5, 0.2, 0.4, 9.0, 9.0], [1.0, 3.0, 3.0, 3.0, 3.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t(HAND_ADV + [0.0, 0.0], [4.0, 0, 0, 0, 0]))  # 5 + 0 − 1
    torch.testing.assert_close(ret, t(HAND_RET + [0.0, 0.0], [5.0, 0, 0, 0, 0]))


def test_gae_skips_a_masked_span_and_lambda_one_is_the_monte_carlo_return():
    rewards, values = t([1.0, 0.0, 2.0]), t([0.5, 0.2, 0.4])
    holed_r = t([1.0, 8.0, 8.0, 0.0, 2.0])  # two masked tokens (a tool's output) inside the response
    holed_v = t([0.5, 8.0, 8.0, 0.2, 0.4])
    holed_mask = torch.tensor([[1, 0, 0, 1, 1]])
    adv, _ = gae(holed_r, holed_v, holed_mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([HAND_ADV[0], 0.0, 0.0, HAND_ADV[1], HAND_ADV[2]]))
    # λ = 1: returns are the discounted sums of rewards, whatever the values
    _, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    torch.testing.assert_close(ret, t([1 + 0.9 * 0 + 0.81 * 2, 0 + 0.9 * 2, 2.0]))
    # λ = 0: the one-step TD errors
    adv0, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv0, t([0.68, 0.16, 1.6]))


# --- whitening ------------------------------------------------------------------------------------------------


def test_whiten_uses_valid_positions_and_the_unbiased_variance():
    x = t([1.0, 2.0, 3.0, 100.0], [4.0, -50.0, -50.0, -50.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    valid = [1.0, 2.0, 3.0, 4.0]
    mean = sum(valid) / 4  # 2.5
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / 3)  # n − 1 = 3
    got = whiten(x, mask)
    expected = t([(v - mean) / std for v in valid[:3]] + [0.0], [(4 - mean) / std, 0, 0, 0])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    kept = whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept, torch.where(mask.bool(), expected + mean, 0.0), atol=1e-6, rtol=1e-6)


# --- PPO losses ---------------------------------------------------------------------------------------------


def test_ppo_clip_cases():
    # ratios 1.5, 0.5, 1.5, 1.0 with advantages +1, −1, −1, +2, and a padded 5th token
    ratio = [1.5, 0.5, 1.5, 1.0, 3.0]
    old = torch.zeros(1, 5)
    lp = torch.tensor([[math.log(r) for r in ratio]], requires_grad=True)
    adv = t([1.0, -1.0, -1.0, 2.0, 50.0])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(lp, old, adv, mask, clip=0.2)
    # per token loss −min(ρA, clip(ρ)A): −1.2·1 (clipped), −(0.8·−1) = 0.8 (clipped), −(1.5·−1) = 1.5, −2
    per_token = [-1.2, 0.8, 1.5, -2.0]
    assert loss.item() == pytest.approx(sum(per_token) / 4)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 4)
    k3 = [(r - 1) - math.log(r) for r in ratio[:4]]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 4)
    loss.backward()
    # clipped tokens get no gradient; the others −A·ρ/n
    torch.testing.assert_close(lp.grad, t([0.0, 0.0, 1.5 / 4, -2.0 / 4, 0.0]))


def test_value_loss_clipped_and_plain():
    values = torch.tensor([[1.0, 0.5, 0.0]], requires_grad=True)
    old = t([0.0, 0.0, 0.0])
    returns = t([2.0, -1.0, 0.0])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # token 0: (1 − 2)² = 1 vs (0.2 − 2)² = 3.24 → 3.24; token 1: (0.5 + 1)² = 2.25 vs (0.2 + 1)² = 1.44 → 2.25
    assert loss.item() == pytest.approx(0.5 * (3.24 + 2.25) / 2)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    plain, _ = value_loss(values, old, returns, mask, clip=None)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 2.25) / 2)


# --- GRPO ---------------------------------------------------------------------------------------------------


def test_grpo_advantages_one_group_of_four():
    adv = grpo_advantages(t(1.0, 0.0, 0.0, 1.0), group_size=4)
    std = math.sqrt(4 * 0.25 / 3)  # torch's unbiased std of (1, 0, 0, 1), as TRL
    a = 0.5 / (std + 1e-4)
    torch.testing.assert_close(adv, t(a, -a, -a, a))
    torch.testing.assert_close(
        grpo_advantages(t(1.0, 0.0, 0.0, 1.0), 4, scale=False), t(0.5, -0.5, -0.5, 0.5)
    )


def test_grpo_advantages_groups_are_independent_and_shapes_kept():
    rewards = t([1.0, 0.0], [3.0, 3.0], [2.0, 4.0])  # (N, G) = (3, 2)
    adv = grpo_advantages(rewards, group_size=2)
    s = math.sqrt(0.5)  # unbiased std of two values 1 apart
    torch.testing.assert_close(
        adv, t([0.5 / (s + 1e-4), -0.5 / (s + 1e-4)], [0, 0], [-1 / (2 * s + 1e-4), 1 / (2 * s + 1e-4)])
    )
    torch.testing.assert_close(grpo_advantages(rewards.flatten(), 2), adv.flatten())
    with pytest.raises(ValueError, match="groups of 4"):
        grpo_advantages(t(1.0, 2.0, 3.0), 4)
    with pytest.raises(ValueError, match=">= 2"):
        grpo_advantages(t(1.0, 2.0), 1)
    with pytest.raises(ValueError, match="NaN"):
        grpo_advantages(t(1.0, float("nan")), 2)


def grpo_batch():
    # two responses of lengths 3 and 1 (padded to 4); one update per batch: old_logprobs = None, ratio 1
    lp = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-1.0, 7.0, 7.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    return lp, mask, t(1.0, -1.0)


def test_grpo_loss_reductions():
    lp, mask, adv = grpo_batch()
    # per-token losses −A: row 0 (−1, −1, −1), row 1 (+1)
    grpo, stats = grpo_loss(lp, None, None, adv, mask, loss_type="grpo")
    assert grpo.item() == pytest.approx((-1.0 + 1.0) / 2)  # each sequence's mean, then the mean
    assert stats["clip_fraction"].item() == 0.0 and stats["kl"].item() == 0.0
    bnpo, _ = grpo_loss(lp, None, None, adv, mask, loss_type="bnpo")
    assert bnpo.item() == pytest.approx((-3.0 + 1.0) / 4)  # every token weighs the same
    dapo, _ = grpo_loss(lp, None, None, adv, mask, loss_type="dapo")
    assert dapo.item() == pytest.approx(bnpo.item())
    dr, _ = grpo_loss(lp, None, None, adv, mask, loss_type="dr_grpo")
    assert dr.item() == pytest.approx(-2.0 / (2 * 4))  # B · T
    dr10, _ = grpo_loss(lp, None, None, adv, mask, loss_type="dr_grpo", max_len=10)
    assert dr10.item() == pytest.approx(-2.0 / 20)
    with pytest.raises(ValueError, match="grpo, bnpo, dapo, dr_grpo"):
        grpo_loss(lp, None, None, adv, mask, loss_type="ppo")


def test_grpo_gradient_is_advantage_over_length():
    lp, mask, adv = grpo_batch()
    loss, _ = grpo_loss(lp, None, None, adv, mask, loss_type="grpo")
    loss.backward()
    # d/dlogπ of −A·exp(logπ − sg(logπ)) = −A; then 1/|o_i| and 1/B
    torch.testing.assert_close(lp.grad, t([-1 / 6, -1 / 6, -1 / 6, 0.0], [0.5, 0.0, 0.0, 0.0]))


def test_grpo_clip_and_kl_term():
    lp = torch.tensor([[math.log(1.5), 0.0]])
    old = torch.zeros(1, 2)
    ref = t([0.0, -LN2])  # token 1: π/π_ref = 2
    mask = torch.ones(1, 2)
    loss, stats = grpo_loss(lp, old, ref, t(1.0), mask, clip=0.2, beta=0.1)
    k3 = [(1 / 1.5) - 1 + math.log(1.5), 0.5 - 1 + LN2]
    assert loss.item() == pytest.approx(((-1.2 + 0.1 * k3[0]) + (-1.0 + 0.1 * k3[1])) / 2)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["kl"].item() == pytest.approx(sum(k3) / 2)
    # DAPO's clip-higher: ratio 1.25 is clipped at 1 + 0.2 but not at 1 + 0.28
    lp2 = torch.tensor([[math.log(1.25), 0.0]])
    _, s_sym = grpo_loss(lp2, old, None, t(1.0), mask, clip=0.2)
    _, s_high = grpo_loss(lp2, old, None, t(1.0), mask, clip=0.2, clip_high=0.28)
    assert s_sym["clip_fraction"].item() == 0.5 and s_high["clip_fraction"].item() == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(lp, old, None, t(1.0), mask, beta=0.1)


def test_masked_mean_ignores_nan_in_padding():
    x = t([1.0, 3.0, float("nan")])
    assert masked_mean(x, torch.tensor([[1, 1, 0]])).item() == 2.0
