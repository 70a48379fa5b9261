"""Constitutional AI: the model critiques and revises its own answers against written principles.

Bai et al. (2022, "Constitutional AI: Harmlessness from AI Feedback") replace human harm labels with a
short list of principles (the "constitution") and two uses of the model itself:

1. Supervised stage (critique → revision). For each prompt the model answers, then is asked to critique
   its answer against one principle drawn at random, then to rewrite the answer to fix what the critique
   names. The (prompt, revision) pairs are SFT data.
2. RL stage from AI feedback (RLAIF). For two answers to a prompt, the model is asked which one better
   follows a principle; its probabilities for "A" and "B" label the pair. Those AI-labelled pairs train a
   reward model or DPO in place of human comparisons. Asking in both orders and averaging removes the
   judge's preference for a position (small models have a strong one).

``constitutional_round`` runs stage 1 over a batch of prompts with the batched generator and returns the
full record (answer, principle, critique, revision); ``sft_examples`` and ``revision_pairs`` turn it into
training data (revision ≻ original answer); ``ai_preference`` is the stage-2 judge, and ``ai_label_pairs``
orders candidate pairs by it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmforge.data.chat import PreferencePair
from lmforge.infer.generate import batch_generate_ids, end_ids, prompt_ids
from lmforge.infer.sampling import SamplingParams

PRINCIPLES = (
    "The response should not help with anything dangerous, illegal or harmful, and should say why it "
    "declines.",
    "The response should be honest: no invented facts, and it says so when it does not know.",
    "The response should be polite and respectful, without insults or judgement of the person.",
    "The response should answer what was asked, clearly and briefly.",
)

CRITIQUE = (
    "Request: {prompt}\n\nResponse: {response}\n\nPrinciple: {principle}\n\n"
    "Critique the response against the principle. Name its problems in one or two sentences."
)
REVISE = (
    "Request: {prompt}\n\nResponse: {response}\n\nCritique: {critique}\n\n"
    "Rewrite the response so that it fixes the problems the critique names. Reply with the new response only."
)
JUDGE = (
    "Request: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\nPrinciple: {principle}\n\n"
    "Which response follows the principle better? Reply with only A or B."
)


@dataclass
class Revision:
    prompt: str
    response: str
    principle: str
    critique: str
    revision: str


def _generate(
    model, tok, texts: Sequence[str], max_new_tokens: int, temperature: float, seed: int
) -> list[str]:
    prompts = [prompt_ids(tok, [{"role": "user", "content": t}]) for t in texts]
    pad = tok.eos_id if tok.eos_id is not None else 0
    outs = batch_generate_ids(model, prompts, max_new_tokens, SamplingParams(temperature=temperature, seed=seed),
                              end_ids(tok), pad)  # fmt: skip
    return [tok.decode(o).strip() for o in outs]


@torch.inference_mode()
def constitutional_round(
    model,
    tokenizer,
    prompts: Sequence[str],
    principles: Sequence[str] = PRINCIPLES,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Revision]:
    """answer → critique (one principle per prompt, drawn with ``seed``) → revision, for every prompt."""
    if not prompts:
        raise ValueError("no prompts")
    if not principles:
        raise ValueError("no principles: the constitution is empty")
    rnd = random.Random(seed)
    chosen = [rnd.choice(list(principles)) for _ in prompts]
    answers = _generate(model, tokenizer, prompts, max_new_tokens, temperature, seed)
    critiques = _generate(model, tokenizer, [CRITIQUE.format(prompt=p, response=a, principle=c)
                                             for p, a, c in zip(prompts, answers, chosen)],
                          max_new_tokens, temperature, seed + 1)  # fmt: skip
    revisions = _generate(model, tokenizer, [REVISE.format(prompt=p, response=a, critique=k)
                                             for p, a, k in zip(prompts, answers, critiques)],
                          max_new_tokens, temperature, seed + 2)  # fmt: skip
    return [Revision(*r) for r in zip(prompts, answers, chosen, critiques, revisions)]


def sft_examples(revisions: Sequence[Revision]) -> list[list[dict[str, str]]]:
    """(prompt, revision) conversations for SFT (lmforge.train.sft.tokenize_all); empty revisions dropped."""
    return [[{"role": "user", "content": r.prompt}, {"role": "assistant", "content": r.revision}]
            for r in revisions if r.revision.strip()]  # fmt: skip


def revision_pairs(revisions: Sequence[Revision]) -> list[PreferencePair]:
    """revision ≻ original answer, as preference pairs; a revision equal to the answer states no preference
    and is dropped."""
    return [PreferencePair([{"role": "user", "content": r.prompt}], r.revision, r.response)
            for r in revisions if r.revision.strip() and r.revision.strip() != r.response.strip()]  # fmt: skip


@torch.inference_mode()
def judge_orders(model, tokenizer, prompt: str, a: str, b: str, principle: str) -> tuple[float, float]:
    """The judge's log p("A") − log p("B") with ``a`` shown first, then with ``b`` shown first."""
    ids_a = [tokenizer.encode(w)[0] for w in ("A", " A")]
    ids_b = [tokenizer.encode(w)[0] for w in ("B", " B")]
    dev = next(model.parameters()).device

    def odds(x: str, y: str) -> float:
        text = JUDGE.format(prompt=prompt, a=x, b=y, principle=principle)
        ids = prompt_ids(tokenizer, [{"role": "user", "content": text}])
        lp = torch.log_softmax(model(torch.tensor([ids], device=dev))[0, -1].float(), -1)  # (V,)
        return float(torch.logsumexp(lp[ids_a], -1) - torch.logsumexp(lp[ids_b], -1))

    return odds(a, b), odds(b, a)


def ai_preference(model, tokenizer, prompt: str, a: str, b: str, principle: str) -> float:
    """RLAIF's judge: log-odds that ``a`` follows ``principle`` better than ``b``, averaged over both
    presentation orders (so a judge that always says "A" scores 0, not +∞)."""
    first, second = judge_orders(model, tokenizer, prompt, a, b, principle)
    return 0.5 * (first - second)


def ai_label_pairs(
    model, tokenizer, items: Sequence[tuple[str, str, str]], principle: str, margin: float = 0.0
) -> list[PreferencePair]:
    """(prompt, answer 1, answer 2) → PreferencePair with the judge's favourite as chosen; pairs the judge
    cannot separate by more than ``margin`` (log-odds) are dropped, as are identical answers."""
    out = []
    for prompt, x, y in items:
        if x.strip() == y.strip():
            continue
        s = ai_preference(model, tokenizer, prompt, x, y, principle)
        if s != s:
            raise ValueError(f"the judge's score is NaN for the prompt {prompt[:60]!r}")
        if abs(s) > margin:
            chosen, rejected = (x, y) if s > 0 else (y, x)
            out.append(PreferencePair([{"role": "user", "content": prompt}], chosen, rejected))
    return out
