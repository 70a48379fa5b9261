"""Generative tasks: prompts, stops, extraction and scoring as lm-evaluation-harness does them."""

from __future__ import annotations

import json
import random
from itertools import combinations
from math import comb
from pathlib import Path

import pytest

from lmforge.eval import generative as g
from lmforge.eval.sandbox import run_code, run_many
from lmforge.eval.tasks import BUILTIN, sample_shots


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def gsm8k_train(data: Path) -> list[dict]:
    return _jsonl(data / "eval" / "gsm8k" / "train.jsonl")


@pytest.fixture(scope="module")
def gsm8k_test(data: Path) -> list[dict]:
    return _jsonl(data / "eval" / "gsm8k" / "test.jsonl")


@pytest.fixture(scope="module")
def human_eval(data: Path) -> list[dict]:
    return _jsonl(data / "eval" / "suite" / "human_eval.jsonl")


# --- GSM8K ------------------------------------------------------------------------------------------------


def test_gsm8k_strict_and_flexible_on_the_format():
    got = g.extract_gsm8k(" She eats 3 and bakes 4, so she has 16 - 3 - 4 = 9 eggs... 18 eggs.\n#### 18")
    assert got == {"strict": "18", "flexible": "18"}


def test_gsm8k_strict_needs_the_marker_flexible_takes_the_last_number():
    got = g.extract_gsm8k(" 3 boxes of $400 each. The answer is $1,200.")
    # the flexible regex keeps "$", "," and the final "." (all in its character class) ...
    assert got == {"strict": None, "flexible": "$1,200."}
    # ... and exact_match's regexes_to_ignore remove them before comparing
    assert g.gsm8k_exact_match(got["flexible"], "1200")
    assert not g.gsm8k_exact_match(got["strict"], "1200")


def test_gsm8k_regex_details():
    # strict takes the FIRST "#### ", flexible the LAST number; a lone digit counts through the 2nd group
    assert g.extract_gsm8k("#### 5\n#### 7 then 9") == {"strict": "5", "flexible": "9"}
    assert g.extract_gsm8k("x = -3") == {"strict": None, "flexible": "-3"}
    assert g.extract_gsm8k("no numbers here") == {"strict": None, "flexible": None}
    assert g.extract_gsm8k("#### -1,000.5")["strict"] == "-1,000.5"
    # the generation is cut where lm-eval's `until` would have cut it
    assert g.extract_gsm8k("So 4.\n#### 4\n\nQuestion: what is 5 + 6?\nAnswer: 11") == {
        "strict": "4",
        "flexible": "4",
    }


def test_gsm8k_exact_match_settings():
    assert g.gsm8k_exact_match("1,080", "1080")
    assert g.gsm8k_exact_match("$5.", "5")
    assert g.gsm8k_exact_match("72", "Natalia sold 48+24 = 72 clips.\n#### 72")  # the whole solution works
    assert not g.gsm8k_exact_match("72.0", "72")  # no numeric equivalence, as in lm-eval
    assert not g.gsm8k_exact_match(" 72", "72")  # nor whitespace stripping (the filter already strips)
    assert not g.gsm8k_exact_match(None, "72")


def test_gsm8k_target_on_real_rows(gsm8k_train):
    assert gsm8k_train[0]["answer"].endswith("#### 72")
    assert g.gsm8k_target(gsm8k_train[0]["answer"]) == "72"
    with_comma = next(r for r in gsm8k_train if "," in r["answer"].split("#### ")[-1])
    target = g.gsm8k_target(with_comma["answer"])
    assert target == with_comma["answer"].split("#### ")[-1].replace(",", "").strip()
    assert "," not in target and target.isdigit()
    # the reference's own "#### N" line extracts (strict) to a match of its target: a sanity check of both
    for row in gsm8k_train[:200]:
        assert g.gsm8k_exact_match(g.extract_gsm8k(row["answer"])["strict"], g.gsm8k_target(row["answer"]))


def gsm8k_prompt(row: dict, pool: list[dict], k: int, rnd: random.Random | None = None) -> str:
    task = BUILTIN["gsm8k"]
    return task.fewshot_prefix(row, pool, k, rnd) + task.render(row)["text"]


def test_gsm8k_prompt_layout():
    shots = [{"question": "Q1?", "answer": "A1\n#### 1"}, {"question": "Q2?", "answer": "A2\n#### 2"}]
    q3 = {"question": "Q3?", "answer": "#### 3"}
    assert gsm8k_prompt(q3, shots, 0) == "Question: Q3?\nAnswer:"
    prompt = gsm8k_prompt(q3, shots, 2)  # both shots, in the sampler's order, each with its whole solution
    assert prompt.endswith("\n\nQuestion: Q3?\nAnswer:")
    assert sorted(prompt.split("\n\n")[:2]) == [
        "Question: Q1?\nAnswer: A1\n#### 1",
        "Question: Q2?\nAnswer: A2\n#### 2",
    ]
    assert (
        g.GSM8K_STOP == ["Question:", "</s>", "<|im_end|>"] and list(BUILTIN["gsm8k"].until) == g.GSM8K_STOP
    )


def test_fewshot_sampling_is_deterministic_and_lm_eval_shaped(gsm8k_train, gsm8k_test):
    a = sample_shots(gsm8k_train, 5)
    assert a == sample_shots(gsm8k_train, 5, seed=1234)
    assert a == random.Random(1234).sample(gsm8k_train, 5)  # lm-eval's ContextSampler.sample
    assert a != sample_shots(gsm8k_train, 5, seed=1)
    assert len(a) == 5 and len({r["question"] for r in a}) == 5
    # one generator for the whole task, advanced question by question, as lm-eval's sampler is
    rnd = random.Random(1234)
    per_question = [sample_shots(gsm8k_train, 5, rnd=rnd) for _ in range(3)]
    assert per_question[0] == a and per_question[1] != a
    again = random.Random(1234)
    assert per_question == [sample_shots(gsm8k_train, 5, rnd=again) for _ in range(3)]
    # shots come from train and questions from test: no test question is ever its own example
    train_questions = {r["question"] for r in gsm8k_train}
    rnd, again = random.Random(1234), random.Random(1234)
    for row in gsm8k_test[:50]:
        shots = sample_shots(gsm8k_train, 5, rnd=again)
        prompt = gsm8k_prompt(row, gsm8k_train, 5, rnd)  # the task's prompt draws exactly those shots
        assert prompt.startswith(BUILTIN["gsm8k"].shot(shots[0]) + "\n\n")
        assert prompt.count(row["question"]) == 1 and prompt.endswith(f"Question: {row['question']}\nAnswer:")
    assert not train_questions & {r["question"] for r in gsm8k_test[:50]}


def test_fewshot_from_the_same_split_excludes_the_question(gsm8k_train):
    pool = gsm8k_train[:12]  # small, so the question would often be drawn
    rnd = random.Random(1234)
    for _ in range(40):
        for row in pool:
            shots = sample_shots(pool, 5, rnd=rnd, exclude=row)
            assert len(shots) == 5 and row not in shots
    # duplicates of the question in the pool are all kept out, and k are still returned
    dup = [pool[0]] * 6 + pool[1:7]
    for seed in range(20):
        shots = sample_shots(dup, 5, seed=seed, exclude=pool[0])
        assert len(shots) == 5 and pool[0] not in shots


# --- TriviaQA ---------------------------------------------------------------------------------------------


def test_triviaqa_normalize():
    assert g.triviaqa_normalize("Dieppe, France!") == "dieppe france"
    assert g.triviaqa_normalize("  The  Hat ") == "  the  hat "  # only case and punctuation


def test_triviaqa_em_aliases_case_punctuation(data: Path):
    rows = _jsonl(data / "eval" / "suite" / "triviaqa_sm_sub.jsonl")
    onion = next(r for r in rows if r["answer"] == "Onion")
    assert onion["context"].startswith("Question: ") and onion["context"].endswith("?\nAnswer:")
    assert g.triviaqa_em(" Onion", onion["aliases"])
    assert g.triviaqa_em(" bulb ONIONS", onion["aliases"])
    assert g.triviaqa_em(" Onion.\nQuestion: next", onion["aliases"])  # cut at the first stop
    assert not g.triviaqa_em(" Garlic", onion["aliases"])
    assert not g.triviaqa_em("\nOnion", onion["aliases"])  # a leading newline is a stop: empty answer
    # punctuation goes on both sides; the answer is cut at "," so only the first part counts
    assert g.triviaqa_em(" Dieppe (Seine-Maritime)", ["Dieppe (Seine-Maritime)"])
    assert g.triviaqa_em(" dieppe seinemaritime", ["Dieppe (Seine-Maritime)"])
    assert not g.triviaqa_em(" Dieppe, France", ["Dieppe, France"])
    assert g.triviaqa_em(" Dieppe, France", ["Dieppe"])
    assert g.triviaqa_em("Paris ", "Paris")  # a single string target, and the answer is stripped
    assert g.TRIVIAQA_STOP == ["\n", ".", ","]


# --- HumanEval --------------------------------------------------------------------------------------------


def test_truncate_at_stops():
    body = "    return x + 1\n"
    assert g.truncate_at_stops(body + "\n\ndef other():\n    pass\n", g.HUMANEVAL_STOP) == body + "\n"
    assert g.truncate_at_stops(body + "\nprint(f(1))\n#x", g.HUMANEVAL_STOP) == body
    assert g.truncate_at_stops(body + "\nif __name__ == '__main__':\n", g.humaneval_stop) == body
    assert g.truncate_at_stops("abc", ["", "z"]) == "abc"
    assert g.truncate_at_stops("a.b,c", [",", "."]) == "a"  # the earliest stop, whatever the list order
    assert g.HUMANEVAL_STOP == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def test_humaneval_program_layout():
    problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    assert g.humaneval_program(problem, "    return x + 1") == (
        "def f(x):\n    return x + 1\ndef check(c):\n    assert c(1) == 2\n\ncheck(f)\n"
    )


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(human_eval):
    problems = human_eval[:3]
    programs = [g.humaneval_program(p, p["canonical_solution"]) for p in problems]
    programs += [g.humaneval_program(p, "    return None\n") for p in problems]
    results = run_many(programs, timeout=10, workers=2)
    assert [r.status for r in results[:3]] == ["passed"] * 3, [r.detail for r in results[:3]]
    assert all(r.status == "failed" and not r.passed for r in results[3:])
    # a completion that never returns is a timeout, not a hang of the evaluation
    loop = run_code(g.humaneval_program(problems[0], "    while True:\n        pass\n"), timeout=2)
    assert loop.status == "timeout"


def _pass_at_k_brute(n: int, c: int, k: int) -> float:
    """The definition: the fraction of k-subsets of the n samples that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_the_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = _pass_at_k_brute(n, c, k)
                assert g.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
                assert g.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_special_cases():
    assert g.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert g.pass_at_k(10, 0, 5) == 0.0
    assert g.pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong: every 5 contain a pass
    assert 0.0 < g.pass_at_k(1000, 1, 100) < 1.0  # large n, where the binomials would be huge
    assert g.pass_at_k(1000, 1, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        g.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        g.pass_at_k(5, 1, 6)
