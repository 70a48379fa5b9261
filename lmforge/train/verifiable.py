"""Verifiable rewards: tasks whose answers a program can check, for GRPO (lmforge.train.grpo).

RL with verifiable rewards (DeepSeekMath's GRPO, Tülu 3's RLVR) replaces the learnt reward model with a
checker: the completion is right or wrong, so the policy cannot exploit a reward model's blind spots.
The task must sit between "never solved" and "always solved" for the starting model: a group of samples
that all score the same has zero advantage and teaches nothing.

``arithmetic(n, seed)``: two-number additions and subtractions, answered with one integer. The reward is
1 when the last integer of the completion equals the answer, else 0: the final number, as lm-eval's
GSM8K "flexible-extract" reads it, so "3 + 5 = 8" counts (SmolLM2-135M-Instruct answers in that form,
whatever the prompt asks) and "3 + 5 = 9" does not.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int


def arithmetic(n: int, seed: int = 0, low: int = 1, high: int = 20) -> list[Problem]:
    """n problems "What is a + b?" / "What is a - b?" with a, b in [low, high], seeded and reproducible."""
    if n < 0 or low > high:
        raise ValueError(f"need n >= 0 and low <= high, got n={n}, low={low}, high={high}")
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rnd.randint(low, high), rnd.randint(low, high)
        if rnd.random() < 0.5:
            out.append(Problem(f"What is {a} + {b}? Answer with the number only.", a + b))
        else:
            out.append(Problem(f"What is {a} - {b}? Answer with the number only.", a - b))
    return out


def final_integer(text: str) -> int | None:
    found = _INT.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


def exact_answer(text: str, answer: int) -> float:
    """1.0 when the last integer in ``text`` is ``answer``, else 0.0."""
    return float(final_integer(text) == answer)


TASKS = {"arithmetic": arithmetic}
