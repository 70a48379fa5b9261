"""Reward model and DPO end to end on a tiny model with SmolLM2's tokenizer: a learnable preference is learned."""

import random

import pytest
import torch

from lmforge.data.chat import PreferencePair
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import load_tokenizer
from lmforge.train.dpo import reference_logps, train_dpo
from lmforge.train.lora import LoRAConfig, adapters_disabled, apply_lora
from lmforge.train.pairs import collate, tokenize_pair, tokenize_pairs
from lmforge.train.reward import RewardModel, reward_metrics, train_reward_model

WORDS = [
    "cats",
    "tea",
    "rain",
    "music",
    "maps",
    "bread",
    "trains",
    "snow",
    "books",
    "coffee",
    "boats",
    "clocks",
]


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


def tiny(vocab: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=vocab, ffn_dim=64,
                                   family="llama", max_seq_len=256, tie_embeddings=True))  # fmt: skip


def pairs(n: int, seed: int) -> list[PreferencePair]:
    """People prefer the polite answer: "Thank you, I like X." over "No. X is bad." (order varies)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        w = rnd.choice(WORDS)
        prompt = [{"role": "user", "content": f"What do you think about {w}?"}]
        out.append(PreferencePair(prompt, f"Thank you, I like {w}.", f"No. {w} is bad."))
    return out


def test_pairs_mark_only_the_responses(tok):
    p = tokenize_pair(tok, pairs(1, 0)[0])
    marked = [i for i, lab in zip(p.chosen.input_ids, p.chosen.labels) if lab != -100]
    assert tok.decode(marked).startswith("Thank you, I like") and tok.decode(marked).endswith("<|im_end|>")
    b = collate([p, p], tok.eos_id)
    assert b["input_ids"].shape[0] == 4 and int(b["last"][0]) == len(p.chosen) - 1
    with pytest.raises(ValueError, match="pair 0: the chosen and rejected responses are identical"):
        tokenize_pairs(tok, [PreferencePair([{"role": "user", "content": "hi"}], "Hello.", "Hello. ")])


def test_a_reward_model_learns_the_preference(tok):
    train, val = tokenize_pairs(tok, pairs(48, 1)), tokenize_pairs(tok, pairs(16, 2))
    rm = RewardModel(tiny(tok.vocab_size))
    before = reward_metrics(rm, val, tok.eos_id)
    log = train_reward_model(
        rm, train, tok.eos_id, val, epochs=3, batch_size=8, lr=3e-3, head_lr=1e-2, progress=False
    )
    after = reward_metrics(rm, val, tok.eos_id)
    assert log[-1]["val_accuracy"] == after["accuracy"] >= 0.95 > before["accuracy"] - 0.5
    assert after["margin"] > 1.0 > abs(before["margin"])
    # centred: the training pairs' mean reward is ~0
    rw, rl = rm.score_pairs(train, tok.eos_id)
    assert abs(float(torch.cat([rw, rl]).mean())) < 0.05


def test_dpo_moves_the_policy_towards_the_chosen_answers(tok):
    train, val = tokenize_pairs(tok, pairs(48, 3)), tokenize_pairs(tok, pairs(16, 4))
    model = tiny(tok.vocab_size)
    apply_lora(model, LoRAConfig(r=8, alpha=16, target_modules="all-linear"))
    log = train_dpo(model, train, tok.eos_id, val, beta=0.1, epochs=3, batch_size=8, lr=5e-3, eval_every=6,
                    progress=False)  # fmt: skip
    first, last = log[0], log[-1]
    # policy = reference: every pair a tie
    assert first["step"] == 0 and first["val_accuracy"] == 0.5 and first["val_margin"] == 0.0
    assert last["val_accuracy"] >= 0.9 and last["val_margin"] > 0.5
    assert last["val_logp_gap"] > first["val_logp_gap"] + 5  # chosen answers became more likely than rejected
    # the reference (adapters off) did not move
    ref_now = reference_logps(model, val, tok.eos_id)
    base = tiny(tok.vocab_size)
    assert torch.allclose(ref_now, reference_logps(base, val, tok.eos_id, ref=base), atol=1e-4)


def test_dpo_inputs_that_cannot_work_are_refused(tok):
    train = tokenize_pairs(tok, pairs(4, 5))
    model = tiny(tok.vocab_size)
    with pytest.raises(ValueError, match="no LoRA layers"):
        train_dpo(model, train, tok.eos_id, progress=False)  # no adapters and no ref
    other = Transformer(
        ModelConfig(dim=32, n_heads=4, n_layers=1, vocab_size=1000, ffn_dim=64, family="llama")
    )
    with pytest.raises(ValueError, match="vocabulary of 1000"):
        train_dpo(model, train, tok.eos_id, ref=other, progress=False)
    apply_lora(model, LoRAConfig(r=4, target_modules="all-linear"))
    with adapters_disabled(model):
        pass
    with pytest.raises(ValueError, match="NaN"):
        from lmforge.train.preference import bradley_terry_loss

        bradley_terry_loss(torch.tensor([float("nan")]), torch.tensor([0.0]))


def test_best_of_n_keeps_the_best_scored_sample():
    from lmforge.train.reward import best_of_n

    model = tiny(128).init_weights()
    low = lambda i, c: sum(t < 16 for t in c) / max(len(c), 1)  # noqa: E731
    picked = best_of_n(model, [[20, 21], [30, 31, 32]], low, n=8, max_new_tokens=6, seed=0)
    for best, s, scores in picked:
        assert s == max(scores) == low(0, best) and len(scores) == 8
    mean_all = sum(sum(sc) / 8 for _, _, sc in picked) / 2
    assert sum(s for _, s, _ in picked) / 2 > mean_all  # selection beats the average sample
    with pytest.raises(ValueError, match="NaN"):
        best_of_n(model, [[20]], lambda i, c: float("nan"), n=2, max_new_tokens=2)


def test_dpo_accuracy_counts_ties_as_half():
    from lmforge.train.dpo import dpo_stats

    ref_w, ref_l = torch.tensor([-5.0, -5.0, -5.0, -5.0]), torch.tensor([-6.0, -6.0, -6.0, -6.0])
    # log-ratio differences: +1 (right), -1 (wrong), 1e-6 (float noise: a tie), 0 (a tie)
    pol_w = torch.tensor([-4.0, -6.0, -5.0 + 1e-6, -5.0])
    s = dpo_stats(pol_w, ref_l.clone(), ref_w, ref_l, beta=0.5)
    assert s["accuracy"] == (1 + 0 + 0.5 + 0.5) / 4
    assert s["margin"] == pytest.approx(0.0, abs=1e-6)  # +1 and -1 cancel
