"""Knowledge distillation loss: zero when the models agree, a two-token case by hand, T², the CE mix."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.distill import distillation_loss


def test_identical_logits_give_zero():
    logits = torch.randn(2, 5, 13, generator=torch.Generator().manual_seed(0)) * 3
    for temperature in (0.5, 1.0, 2.0, 4.0):
        loss, _ = distillation_loss(logits, logits.clone(), None, temperature=temperature)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_two_token_vocabulary_by_hand():
    # teacher logits (2 ln 3, 0) at T = 2 are (ln 3, 0): p_t = (3/4, 1/4); the student's (0, 0): (1/2, 1/2)
    teacher = torch.tensor([[[2 * math.log(3), 0.0], [0.0, 0.0], [9.0, -9.0]]])  # (1, 3, 2)
    student = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position (wildly different) is padding
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss, stats = distillation_loss(student, teacher, mask, temperature=2.0)
    assert loss.item() == pytest.approx(4 * (kl0 + 0.0) / 2)  # T² · mean over the 2 valid tokens
    assert stats["kd"].item() == pytest.approx(loss.item())
    # at T = 1 the teacher is (9/10, 1/10): 2 ln 3 = ln 9
    loss1, _ = distillation_loss(student, teacher, mask, temperature=1.0)
    kl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert loss1.item() == pytest.approx(kl1 / 2)


def test_gradient_is_t_times_probability_gap_and_teacher_gets_none():
    # d(T² KL)/dz_s = T² (p_s − p_t)/T / n = T (p_s − p_t) / n
    student = torch.zeros(1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[2 * math.log(3), 0.0]]], requires_grad=True)
    loss, _ = distillation_loss(student, teacher, None, temperature=2.0)
    loss.backward()
    torch.testing.assert_close(student.grad, torch.tensor([[[2 * (0.5 - 0.75), 2 * (0.5 - 0.25)]]]))
    assert teacher.grad is None


def test_alpha_mixes_in_cross_entropy_on_the_labels():
    teacher = torch.tensor([[[2 * math.log(3), 0.0], [0.0, 0.0]]])
    student = torch.zeros(1, 2, 2)  # uniform: cross-entropy ln 2 on any label
    labels = torch.tensor([[0, -100]])  # the second position is ignored, by KD and CE alike
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss, stats = distillation_loss(student, teacher, None, temperature=2.0, alpha=0.3, labels=labels)
    assert stats["kd"].item() == pytest.approx(4 * kl0)
    assert stats["ce"].item() == pytest.approx(math.log(2))
    assert loss.item() == pytest.approx(0.3 * 4 * kl0 + 0.7 * math.log(2))


def test_errors():
    with pytest.raises(ValueError, match=r"share a tokenizer.*49152.*32000"):
        distillation_loss(torch.zeros(1, 2, 49152), torch.zeros(1, 2, 32000), None)
    with pytest.raises(ValueError, match="alpha and labels"):
        distillation_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), None, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), None, temperature=0.0)
    with pytest.raises(ValueError, match="do not match"):
        distillation_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3), None)


def test_a_student_learns_the_teachers_distribution():
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.train.distill import train_distill
    from lmforge.train.sft import SFTExample, SFTLoader

    def model(dim: int, layers: int, seed: int) -> Transformer:
        torch.manual_seed(seed)
        cfg = ModelConfig(dim=dim, n_heads=4, n_kv_heads=2, n_layers=layers, vocab_size=64, ffn_dim=2 * dim,
                          family="llama", max_seq_len=32, tie_embeddings=False)  # fmt: skip
        return Transformer(cfg).init_weights()

    teacher = model(64, 3, 0)
    teacher.embed.weight.data *= 5  # a peaked, structured distribution worth copying
    teacher.lm_head.weight.data *= 20  # (untied, so its argmax is not just "repeat the input token")
    student = model(32, 2, 1)
    untrained = model(32, 2, 1)  # the same student before distillation
    g = torch.Generator().manual_seed(0)
    ex = [SFTExample(ids, ids) for ids in torch.randint(0, 64, (64, 17), generator=g).tolist()]
    train, val = SFTLoader(ex[:48], 8, 16, seed=0), SFTLoader(ex[48:], 16, 16, seed=0)
    log = train_distill(
        student, teacher, train, steps=60, lr=1e-2, temperature=2.0, val_loader=val, progress=False
    )
    assert log[-1]["val_kd"] < 0.5 * log[0]["val_kd"]
    assert not any(p.requires_grad for p in teacher.parameters())

    # The distilled student as a speculative-decoding draft for its teacher: the output is exactly the
    # teacher's greedy output, and the student picks the teacher's next token (what a greedy draft must
    # do to be accepted) far more often than before distillation, on held-out sequences.
    from lmforge.infer.generate import generate_ids
    from lmforge.infer.sampling import SamplingParams
    from lmforge.infer.speculative import ModelDrafter, speculative_generate_ids

    greedy = SamplingParams(temperature=0.0)
    for row in range(3):
        prompt = torch.tensor([ex[48 + row].input_ids[:4]])
        out, stats = speculative_generate_ids(teacher, prompt, 12, greedy, ModelDrafter(student, teacher))
        assert out.tolist() == generate_ids(teacher, prompt, 12, greedy).tolist() and stats["drafted"] > 0
    held = torch.tensor([e.input_ids for e in ex[48:]])  # (16, 17)
    with torch.no_grad():
        target = teacher(held).argmax(-1)
        agree = {n: float((m(held).argmax(-1) == target).float().mean()) for n, m in
                 (("before", untrained), ("after", student))}  # fmt: skip
    assert agree["after"] > agree["before"] + 0.2, agree
    with pytest.raises(ValueError, match="share the target's tokenizer"):
        ModelDrafter(
            Transformer(ModelConfig(dim=32, n_heads=4, n_layers=1, vocab_size=65, ffn_dim=64)), teacher
        )
    other = Transformer(ModelConfig(dim=32, n_heads=4, n_layers=1, vocab_size=65, ffn_dim=64, family="llama"))
    with pytest.raises(ValueError, match="one tokenizer"):
        train_distill(other, teacher, train, steps=1, progress=False)
