"""PPO-RLHF end to end on a tiny LoRA policy: the score rises while the KL to the reference stays bounded."""

import pytest
import torch

from lmforge.train.lora import LoRAConfig, apply_lora
from lmforge.train.ppo import ValueHead, policy_and_values, reward_model_scorer, train_ppo
from lmforge.train.reward import RewardModel

from .test_grpo import held_out, prompts, reward, tiny


def lora_policy():
    model = tiny()
    model.embed.weight.data *= 3  # see test_grpo: the frozen unembedding needs a trained model's range
    apply_lora(model, LoRAConfig(r=8, alpha=16, target_modules="all-linear"))
    return model


def test_ppo_raises_the_score_with_the_kl_bounded():
    model = lora_policy()
    train, val = prompts(32, 0), prompts(16, 1)
    log, head = train_ppo(model, train, reward, steps=30, prompts_per_step=16, max_new_tokens=6, lr=3e-2,
                          kl_coef=0.05, evaluate=lambda: held_out(model, val), eval_every=10, progress=False)  # fmt: skip
    assert log[-1]["eval"] > log[0]["eval"] + 0.1  # 0.125 → about 0.26 in 30 steps
    kls = [r["kl"] for r in log[1:]]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = reference
    assert 0 < max(kls) < 1.0  # per-token KL to the reference, held down by the penalty
    assert any(p.abs().sum() > 0 for p in head.parameters())  # the value head trained


def test_a_stronger_kl_penalty_keeps_the_policy_closer():
    kl = {}
    for coef in (0.0, 1.0):
        model = lora_policy()
        log, _ = train_ppo(model, prompts(32, 0), reward, steps=15, prompts_per_step=16, max_new_tokens=6,
                           lr=3e-2, kl_coef=coef, progress=False)  # fmt: skip
        kl[coef] = sum(r["kl"] for r in log[-5:]) / 5
    assert kl[1.0] < kl[0.0]


def test_values_align_with_the_scored_tokens_and_a_reward_model_scores():
    model = lora_policy()
    ids = torch.tensor([[20, 21, 22, 5, 6]])
    mask = torch.tensor([[False, False, False, True, True]])
    lp, v, m = policy_and_values(model, ValueHead(64), ids, mask)
    assert lp.shape == v.shape == m.shape == (1, 4) and float(v.detach().abs().sum()) == 0.0
    rm = RewardModel(tiny(1))
    score = reward_model_scorer(rm, None, [[20, 21, 22]])
    assert isinstance(score(0, [5, 6]), float)
    with pytest.raises(ValueError, match="NaN"):
        train_ppo(model, prompts(2, 0), lambda i, c: float("nan"), steps=1, prompts_per_step=2, max_new_tokens=2,
                  progress=False)  # fmt: skip
