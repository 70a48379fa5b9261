"""GRPO end to end on a tiny model and a verifiable toy reward: the reward rises on held-out prompts."""

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.grpo import completion_logprobs, sample_groups, train_grpo
from lmforge.train.lora import LoRAConfig, apply_lora

LOW = 16  # the "right answer": tokens below 16, 1/8 of the vocabulary, ~12% of random samples


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=128, ffn_dim=96,
                                   family="llama", max_seq_len=64)).init_weights()  # fmt: skip


def prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(LOW, 128, (n, 4), generator=g).tolist()


def reward(_: int, completion: list[int]) -> float:
    return sum(t < LOW for t in completion) / len(completion)


def held_out(model, ps) -> float:
    comps = sample_groups(model, ps, 4, 6, set(), 1.0, seed=123, pad_id=0)
    return sum(reward(0, c) for c in comps) / len(comps)


@pytest.mark.parametrize("lora", [False, True])
def test_grpo_raises_the_reward_on_held_out_prompts(lora):
    model = tiny()
    if lora:
        # the tied unembedding stays frozen under LoRA: at init's std 0.02 its logits barely leave uniform
        # whatever the hidden states do, so give it the range a trained model's has
        model.embed.weight.data *= 3
        apply_lora(model, LoRAConfig(r=8, alpha=16, target_modules="all-linear"))
    train, val = prompts(32, 0), prompts(16, 1)
    log = train_grpo(model, train, reward, steps=25, group_size=8, prompts_per_step=4, max_new_tokens=6,
                     lr=3e-2 if lora else 1e-2, beta=0.04 if lora else 0.0,
                     evaluate=lambda: held_out(model, val), eval_every=5, progress=False)  # fmt: skip
    start, end = log[0]["eval"], log[-1]["eval"]
    assert 0.05 < start < 0.3  # the task starts between "never" and "always" solved
    assert end > start + 0.25
    assert all(0 <= r["groups_with_signal"] <= 1 for r in log[1:])
    if lora:
        assert max(r["kl"] for r in log[1:]) > 0  # the KL to the adapter-free base is measured


def test_stopped_completions_keep_their_end_token_and_only_they_are_scored():
    model = tiny()
    comps = sample_groups(model, [[20, 21, 22]], 3, 5, {7}, 1.0, seed=0, pad_id=0)
    assert all(len(c) <= 6 and (len(c) == 5 or c[-1] == 7) for c in comps)
    ids = torch.tensor([[20, 21, 22, 5, 6, 0]])
    mask = torch.tensor([[False, False, False, True, True, False]])
    lp, m = completion_logprobs(model, ids, mask)
    assert lp.shape == (1, 5) and m.tolist() == [[False, False, True, True, False]]


def test_a_stopped_completion_keeps_the_end_token_it_sampled_not_another_end_id():
    model = tiny()
    free = sample_groups(model, [[20, 21, 22]], 1, 6, set(), 1.0, seed=3, pad_id=0)[0]  # no end ids
    k = next(i for i in range(1, 6) if free[i] not in free[:i])  # a token that has not come up before
    other = min(t for t in range(128) if t not in free[: k + 1])  # a smaller end id that was not sampled
    assert other < free[k]  # so "append the smallest end id" would give a different row
    got = sample_groups(model, [[20, 21, 22]], 1, 6, {free[k], other}, 1.0, seed=3, pad_id=0)[0]  # same draws
    assert got == free[: k + 1]  # the row stops on the token it sampled, and keeps that very token


def test_nan_rewards_and_frozen_policies_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="NaN"):
        train_grpo(model, prompts(2, 0), lambda i, c: float("nan"), steps=1, group_size=2, prompts_per_step=1,
                   max_new_tokens=2, progress=False)  # fmt: skip
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_grpo(model, prompts(2, 0), reward, steps=1, progress=False)
