"""PPO-RLHF end to end on a tiny LoRA policy: the score rises while the KL to the reference stays bounded."""

import pytest
import torch

from lmforge.infer.generate import prompt_ids
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import load_tokenizer
from lmforge.train.lora import LoRAConfig, apply_lora
from lmforge.train.ppo import ValueHead, policy_and_values, reply_closing, reward_model_scorer, train_ppo
from lmforge.train.reward import RewardModel
from lmforge.train.sft import tokenize_chat

from .test_grpo import LOW, held_out, prompts, reward, tiny


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
    with pytest.raises(ValueError, match="NaN"):
        train_ppo(model, prompts(2, 0), lambda i, c: float("nan"), steps=1, prompts_per_step=2, max_new_tokens=2,
                  progress=False)  # fmt: skip


def test_the_scorer_reads_a_sampled_reply_where_the_reward_model_was_trained_to(smollm2_gguf):
    tok = load_tokenizer(smollm2_gguf)
    closing = reply_closing(tok)
    assert tok.decode(closing) == "<|im_end|>\n"  # the template's end marker and what follows it
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_heads=2, n_kv_heads=1, n_layers=1, vocab_size=tok.vocab_size, ffn_dim=48,
                      family="llama", max_seq_len=64)  # fmt: skip
    rm = RewardModel(Transformer(cfg).init_weights()).eval()
    with torch.no_grad():
        rm.score_head.weight.normal_()
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    row = tokenize_chat(tok, convo).input_ids  # how a preference pair's response was rendered in training
    with torch.no_grad():
        trained = float(rm(torch.tensor([row]), torch.tensor([len(row) - 1]))[0])
    score = reward_model_scorer(rm, tok, [prompt_ids(tok, convo[:1])])
    reply = tok.encode("Hello there.")
    assert score(0, reply + [tok.token_to_id("<|im_end|>")]) == pytest.approx(trained, abs=1e-5)
    assert score(0, reply) == pytest.approx(trained, abs=1e-5)  # a cut-off reply is closed the same way
    bare = list(prompt_ids(tok, convo[:1])) + reply + [tok.token_to_id("<|endoftext|>")]
    with torch.no_grad():  # the old way, a bare <|endoftext|> after the reply: a state the head never saw
        old = float(rm(torch.tensor([bare]), torch.tensor([len(bare) - 1]))[0])
    assert old != pytest.approx(trained, abs=1e-3)


def test_the_missing_eos_penalty_teaches_the_policy_to_stop():
    ends = set(range(LOW))  # 1/8 of the vocabulary ends a reply: about half the replies of 6 tokens stop
    share = {}
    for penalty in (0.0, 1.0):
        model = lora_policy()
        log, _ = train_ppo(model, prompts(32, 0), lambda i, c: 0.0, steps=15, prompts_per_step=16, max_new_tokens=6,
                           eos_ids=ends, lr=3e-2, kl_coef=0.0, missing_eos_penalty=penalty, progress=False)  # fmt: skip
        share[penalty] = sum(r["ended"] for r in log[-5:]) / 5
    assert share[1.0] > share[0.0] + 0.2
