"""Knowledge distillation: train a small student to match a large teacher's whole next-token distribution.

Hinton, Vinyals and Dean 2015 ("Distilling the Knowledge in a Neural Network", arXiv:1503.02531): the
teacher's full distribution says far more than the one right token — which wrong answers are nearly right —
and a temperature T > 1 softens both distributions so that this "dark knowledge" in the small
probabilities carries weight:

    L_KD = T² · KL(p_teacher^T ‖ p_student^T),   p^T = softmax(z / T)

The gradient of the KL with respect to the student's logits is (p_s^T − p_t^T)/T, so it shrinks as 1/T²
(one 1/T from the softmax, one from the difference of softened probabilities); the factor T² restores it and
keeps the mix with the hard-label cross-entropy balanced whatever T is. The KL is the forward one (teacher
first): the student must cover every token the teacher finds plausible (mean-seeking). It differs from
Hinton's soft-target cross-entropy only by the teacher's entropy, a constant, and is 0 when the two agree.

Token-level distillation needs the two models to share a vocabulary: position t of each distribution must
mean the same token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.train.checkpoint import LoopCheckpoints, resume_loop, save_loop


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """T²·KL(p_teacher^T ‖ p_student^T) per token, averaged over the valid tokens; returns (loss, stats).

    student_logits, teacher_logits (B, T, V), already aligned with each other (both from the same input
    ids, shifted alike). mask (B, T): the tokens to distil; None means all, or ``labels != -100`` when
    labels are given. With ``alpha`` and ``labels`` (B, T) the loss is α·KD + (1 − α)·CE, the student's
    ordinary cross-entropy on the labels at temperature 1. The teacher gets no gradient. Computed in
    float32. stats (detached): ``kd`` and, with labels, ``ce``.
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            "the teacher and the student must share a tokenizer (vocabulary): the student has "
            f"{student_logits.shape[-1]} logits per position, the teacher {teacher_logits.shape[-1]}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} do not match"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (alpha is None) != (labels is None):
        raise ValueError("alpha and labels go together: give both to mix in cross-entropy, or neither")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    if mask is not None:
        keep = mask.bool()
    elif labels is not None:
        keep = labels != -100
    else:
        keep = torch.ones(student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
    if keep.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(keep.shape)} does not match logits {tuple(student_logits.shape)}")
    n = keep.sum().clamp(min=1)

    s = student_logits.float()  # (B, T, V)
    log_p_student = F.log_softmax(s / temperature, dim=-1)  # (B, T, V)
    log_p_teacher = F.log_softmax(teacher_logits.float().detach() / temperature, dim=-1)
    # Σ_v p_t (log p_t − log p_s), from log-probabilities: exp of a log never gives 0·log 0 = NaN
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B, T)
    kd = torch.where(keep, kl, 0.0).sum() / n * temperature**2

    if labels is None:
        return kd, {"kd": kd.detach()}
    if labels.shape != keep.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(student_logits.shape)}")
    keep_ce = keep & (labels != -100)
    safe = torch.where(keep_ce, labels, 0)  # (B, T)
    nll = torch.logsumexp(s, dim=-1) - s.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    ce = torch.where(keep_ce, nll, 0.0).sum() / keep_ce.sum().clamp(min=1)
    loss = alpha * kd + (1 - alpha) * ce
    return loss, {"kd": kd.detach(), "ce": ce.detach()}


def _batch(raw) -> dict[str, torch.Tensor]:
    """A loader's tensors → model inputs + labels: (x, y) of the pretraining loaders, or the packed
    (x, y, segment_ids, position_ids) of PackedLoader / SFTLoader."""
    x, y, *rest = raw
    batch = {"input_ids": x, "labels": y}
    if rest:
        batch.update(segment_ids=rest[0], position_ids=rest[1])
    return batch


def train_distill(
    student,
    teacher,
    loader,
    steps: int,
    lr: float = 1e-3,
    temperature: float = 2.0,
    alpha: float | None = None,
    val_loader=None,
    eval_every: int = 0,
    progress: bool = True,
    ckpt: LoopCheckpoints | None = None,
) -> list[dict[str, float]]:
    """Distil ``teacher`` into ``student`` on the batches of ``loader`` (anything with next_batch(): the
    pretraining loaders, SFTLoader). Scored tokens are those with a label (≠ −100). With ``alpha`` the
    loss mixes in the student's cross-entropy on the labels. AdamW, warm-up then linear decay, clipping.
    Logs the loss, and the held-out KD loss of ``val_loader``'s first batch at step 0, every eval_every
    steps and at the end."""
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.schedules import set_lr, warmup_stable_decay
    from lmforge.train.steps import LossBar, optimizer_step

    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"the teacher's vocabulary has {teacher.config.vocab_size} tokens, the student's "
                         f"{student.config.vocab_size}: token-level distillation needs one tokenizer")  # fmt: skip
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = AdamW(param_groups(student, 0.0), lr=lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    dev = next(student.parameters()).device
    val = _batch(val_loader.next_batch()) if val_loader is not None else None

    def kd_of(batch: dict[str, torch.Tensor], train: bool) -> tuple[torch.Tensor, dict]:
        inputs = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(dev)
        with torch.no_grad():
            t_logits = teacher(**inputs)
        with torch.set_grad_enabled(train):
            s_logits = student(**inputs)
            return distillation_loss(s_logits, t_logits, labels != -100, temperature,
                                     alpha if train else None, labels if train and alpha is not None else None)  # fmt: skip

    def held_out() -> float:
        student.eval()
        value = float(kd_of(val, False)[0])
        student.train()
        return value

    start, log = resume_loop(ckpt, steps, [student], opt, loader=loader)
    if val and start == 0:
        log.append({"step": 0, "val_kd": held_out()})
    student.train()
    bar = LossBar(steps, "distill", progress)
    warm = max(1, steps // 10)
    for step in range(start, steps):
        set_lr(opt, warmup_stable_decay(step, lr, 0.0, warm, steps, decay_fraction=1.0))
        loss, stats = kd_of(_batch(loader.next_batch()), True)
        rec = {"step": step + 1, "loss": optimizer_step(opt, loss, params, 1.0, "distillation loss", step),
               "kd": float(stats["kd"])}  # fmt: skip
        if val and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            rec["val_kd"] = held_out()
        log.append(rec)
        save_loop(ckpt, step + 1, steps, log, [student], opt, loader=loader)
        bar.update(rec["loss"])
    bar.close()
    student.eval()
    return log
