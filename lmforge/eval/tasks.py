"""Tasks: a benchmark is a data file, a prompt template, the choices, the right answer and a metric.

As in lm-evaluation-harness's YAML tasks, a task is declarative: `text` is a Jinja2 template of one row
(the context the model reads), `choices` and `gold` are Jinja2 expressions over the row (the candidate
continuations and the index of the right one). A multiple-choice request scores
text + target_delimiter + choice for every choice; few-shot examples are earlier rows rendered the same way
with their right answer, joined by fewshot_delimiter, after an optional description line. Users add a
task with a JSON or YAML file of the same fields (`lmforge eval MODEL --tasks my_task.yaml`).

The built-in prompts are lm-eval's wherever the data allows (ARC, PIQA, HellaSwag, MMLU, Winogrande,
LAMBADA, GSM8K, TriviaQA): the shared files (llm-foundry's copies) already carry part of the wording in
their `query` field, and the templates add the rest ("\\nAnswer:"). Tasks lm-eval phrases differently
(SIQA, CommonsenseQA, BoolQ) keep llm-foundry's wording; docs/evaluation.md lists which is which.

kinds:
  multiple_choice  one context, k continuations (acc, acc_norm)
  partial          k contexts, one continuation (Winogrande's partial scoring: which option makes the rest
                   of the sentence most probable)
  lambada          context → last word: is it the greedy continuation (acc), and its perplexity
  perplexity       whole documents in rolling windows (word/byte perplexity, bits per byte)
  generate         greedy generation until a stop string, then a scorer (gsm8k, triviaqa, humaneval)
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

KINDS = ("multiple_choice", "partial", "lambada", "perplexity", "generate")
# User task files are data, not code: their templates render in Jinja's sandbox. A field the row lacks is
# an error (StrictUndefined), not a silently empty prompt.
_JINJA = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined)


@dataclass
class Task:
    name: str
    data: str  # path relative to the data folder (or absolute): .jsonl, .csv (MMLU's layout) or .raw
    kind: str = "multiple_choice"
    text: str = "{{query}}"  # Jinja2 template: the context
    choices: str = "choices"  # Jinja2 expression: list of continuations (partial: list of contexts)
    gold: str = "gold"  # Jinja2 expression: index of the right choice (generate: the reference answer)
    continuation: str = "continuation"  # partial / lambada: the continuation's expression
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""  # rendered once before the shots (Jinja2, over the row)
    fewshot_data: str | None = None  # where shots come from; default the task's own rows, minus the row
    fewshot_first_n: bool = False  # take the first k rows as shots (MMLU's dev split), not a random k
    num_fewshot: int = 0  # the default; --num-fewshot overrides
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    process: str | None = None  # a built-in row preprocessor (PROCESSORS), e.g. "hellaswag"
    until: tuple[str, ...] = ()  # generate: stop strings
    max_tokens: int = 256  # generate: token budget
    scorer: str | None = None  # generate: "gsm8k", "triviaqa" or "humaneval"
    group: str | None = None  # tasks of one group are averaged (MMLU's subjects)
    csv_columns: tuple[str, ...] = ()  # .csv rows: the column names

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        self.metrics, self.until, self.csv_columns = (
            tuple(self.metrics),
            tuple(self.until),
            tuple(self.csv_columns),
        )
        try:
            self._text = _JINJA.from_string(self.text)
            self._description = _JINJA.from_string(self.description)
            self._choices = _JINJA.compile_expression(self.choices)
            self._gold = _JINJA.compile_expression(self.gold)
            self._continuation = _JINJA.compile_expression(self.continuation)
        except Exception as e:  # jinja2.TemplateSyntaxError: say which task and field
            raise ValueError(f"task {self.name!r}: bad template: {e}") from None

    # -- one row ------------------------------------------------------------------------------------
    def render(self, row: dict) -> dict[str, Any]:
        """The row's context text, choices, gold and continuation; KeyError/ValueError name the field."""
        out: dict[str, Any] = {"text": self._text.render(**row)}
        if self.kind in ("multiple_choice", "partial"):
            choices = self._choices(**row)
            gold = self._gold(**row)
            if (
                not isinstance(choices, list | tuple)
                or not choices
                or not all(isinstance(c, str) for c in choices)
            ):
                raise ValueError(f"`{self.choices}` should give a non-empty list of strings, got {choices!r}")
            if isinstance(gold, str) and gold.isdigit():
                gold = int(gold)
            if not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise ValueError(f"`{self.gold}` should give an index below {len(choices)}, got {gold!r}")
            out.update(choices=list(choices), gold=gold)
        if self.kind in ("partial", "lambada"):
            cont = self._continuation(**row)
            if not isinstance(cont, str) or not cont:
                raise ValueError(f"`{self.continuation}` should give a non-empty string, got {cont!r}")
            out["continuation"] = cont
        if self.kind == "generate":
            out["gold"] = self._gold(**row)
        return out

    def shot(self, row: dict) -> str:
        """One solved example: the context and its right answer."""
        r = self.render(row)
        if self.kind == "multiple_choice":
            return r["text"] + self.target_delimiter + r["choices"][r["gold"]]
        if self.kind == "partial":
            return r["choices"][r["gold"]] + self.target_delimiter + r["continuation"]
        if self.kind == "lambada":
            return r["text"] + self.target_delimiter + r["continuation"]
        return r["text"] + self.target_delimiter + str(r["gold"])

    def fewshot_prefix(self, row: dict, pool: list[dict], k: int, rnd: random.Random | None = None) -> str:
        """Description + k solved examples + the delimiter, for `row`.

        Call it for the eval rows in order with one `rnd = random.Random(FEWSHOT_SEED)` per task: that is
        lm-eval's sampler, so the prompts are lm-eval's (see sample_shots)."""
        description = self._description.render(**row)
        if k == 0:
            return description
        if self.fewshot_first_n:
            shots = pool[:k]
        else:
            own_split = self.fewshot_data is None  # shots from the eval rows: never the row itself
            if len(pool) - own_split < k:
                raise ValueError(
                    f"task {self.name!r}: {k} shots asked, {len(pool) - own_split} rows to draw from"
                )
            shots = sample_shots(pool, k, rnd=rnd, exclude=row if own_split else None)
        return description + self.fewshot_delimiter.join(self.shot(s) for s in shots) + self.fewshot_delimiter


# -- few-shot examples ------------------------------------------------------------------------------
FEWSHOT_SEED = 1234  # simple_evaluate(fewshot_random_seed=DEFAULT_OTHER_SEED = 1234), lm_eval/evaluator.py


def sample_shots(
    train_rows: Sequence[dict],
    k: int,
    seed: int = FEWSHOT_SEED,
    *,
    exclude: dict | None = None,
    rnd: random.Random | None = None,
) -> list[dict]:
    """k few-shot examples drawn as lm-eval's default sampler draws them.

    lm-eval's ContextSampler.sample (lm_eval/api/samplers.py) is `rnd.sample(fewshot_docs, k)`, where rnd
    is ONE random.Random(1234) per task (set_fewshot_seed -> sampler.set_rnd, lm_eval/api/task.py),
    advanced once per evaluated question in order. So the shots of question i are the i-th draw of that
    generator: pass the same `rnd` for every question, in order, to reproduce lm-eval's prompts; without
    `rnd` this is the first draw of random.Random(seed).

    `exclude`: when shots come from the very split being evaluated, lm-eval draws k + 1 and drops the
    question itself (compared as a dict), so a question is never its own example. GSM8K draws from train
    and evaluates test, so lm-eval excludes nothing there.
    """
    rnd = random.Random(seed) if rnd is None else rnd
    rows = train_rows if isinstance(train_rows, list) else list(train_rows)
    if exclude is None:
        return rnd.sample(rows, min(k, len(rows)))
    shots = [r for r in rnd.sample(rows, min(k + 1, len(rows))) if r != exclude][:k]
    if len(shots) < k:  # the split holds copies of the question: lm-eval resamples without any of them
        pool = [r for r in rows if r != exclude]
        shots = rnd.sample(pool, min(k, len(pool)))
    return shots


# -- data -------------------------------------------------------------------------------------------
@dataclass
class Rows:
    rows: list[dict]
    skipped: int = 0  # malformed rows left out (on_bad_row="skip")


def read_rows(task: Task, path: Path, on_bad_row: str = "fail") -> Rows:
    """The rows of a task's file, preprocessed. A malformed row (bad JSON, a missing field, a gold index out
    of range) fails with its file and line number, or with on_bad_row="skip" is left out and counted."""
    if on_bad_row not in ("fail", "skip"):
        raise ValueError(f"on_bad_row must be 'fail' or 'skip', not {on_bad_row!r}")
    if not path.is_file():
        raise FileNotFoundError(f"task {task.name!r}: data file {path} not found (set LMFORGE_DATA?)")
    process = PROCESSORS[task.process] if task.process else None
    out = Rows([])
    if path.suffix == ".raw":  # WikiText: one row per article
        from lmforge.eval.perplexity import wikitext_documents

        return Rows([{"page": d} for d in wikitext_documents(path)])
    with open(path, encoding="utf-8", newline="" if path.suffix == ".csv" else None) as f:
        lines = csv.reader(f) if path.suffix == ".csv" else f
        for n, line in enumerate(lines, 1):
            try:
                if path.suffix == ".csv":
                    if len(line) != len(task.csv_columns):
                        raise ValueError(f"{len(line)} columns, expected {len(task.csv_columns)}")
                    row = dict(zip(task.csv_columns, line, strict=True))
                else:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("a row must be a JSON object")
                if process:
                    row = process(row)
                task.render(row)  # validates the fields the task uses
            except (ValueError, KeyError, TypeError, IndexError, TemplateError) as e:
                if on_bad_row == "fail":
                    raise ValueError(f"{path}:{n}: malformed row for task {task.name!r}: {e}") from None
                out.skipped += 1
                continue
            out.rows.append(row)
    return out


# -- row preprocessors (lm-eval's utils.py of each task) ---------------------------------------------
def _hellaswag_clean(text: str) -> str:
    # brackets like "[title]" and "[step]" are artifacts of HellaSwag's WikiHow half
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def process_hellaswag(row: dict) -> dict:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": _hellaswag_clean(row["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in row["endings"]], "gold": int(row["label"])}  # fmt: skip


def process_mmlu(row: dict) -> dict:
    letters = "ABCD"
    if row["answer"] not in letters:
        raise ValueError(f"answer {row['answer']!r} is not one of A, B, C, D")
    return {**row, "choices": [row[c] for c in letters], "gold": letters.index(row["answer"])}


PROCESSORS: dict[str, Callable[[dict], dict]] = {"hellaswag": process_hellaswag, "mmlu": process_mmlu}


# -- the built-in tasks ------------------------------------------------------------------------------
def _suite(name: str, **kw: Any) -> Task:
    return Task(name=name, data=f"eval/suite/{kw.pop('file', name)}.jsonl", **kw)


MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()


def _mmlu(subject: str, cloze: bool) -> Task:
    # lm-eval's mmlu (letters) and the cloze form of OLMES / SmolLM's evaluation (answer texts, acc_norm)
    letters = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:"
    return Task(
        name=f"mmlu_cloze_{subject}" if cloze else f"mmlu_{subject}",
        data=f"eval/mmlu/test/{subject}_test.csv",
        text="Question: {{question.strip()}}\nAnswer:" if cloze else letters,
        choices="choices" if cloze else "['A', 'B', 'C', 'D']",
        description=f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        fewshot_data=f"eval/mmlu/dev/{subject}_dev.csv",
        fewshot_first_n=True,
        process="mmlu",
        metrics=("acc", "acc_norm") if cloze else ("acc",),
        group="mmlu_cloze" if cloze else "mmlu",
        csv_columns=("question", "A", "B", "C", "D", "answer"),
    )  # fmt: skip


BUILTIN: dict[str, Task] = {
    t.name: t
    for t in [
        _suite("arc_easy", text="{{query}}\nAnswer:"),
        _suite("arc_challenge", text="{{query}}\nAnswer:"),
        _suite("piqa", text="{{query.rstrip('\n')}}\nAnswer:"),
        _suite("boolq", text="{{query}}\nAnswer:", metrics=("acc",)),
        _suite("copa", metrics=("acc",)),
        _suite("openbookqa", file="openbook_qa"),
        _suite("siqa", metrics=("acc",)),
        _suite("commonsense_qa", metrics=("acc",)),
        Task("hellaswag", data="eval/hellaswag_val_1000.jsonl", process="hellaswag"),
        _suite("winogrande", kind="partial", text="", choices="context_options", metrics=("acc",)),
        _suite("lambada", file="lambada_openai", kind="lambada", text="{{context}}", metrics=("acc", "perplexity")),
        Task("wikitext", data="text/wikitext2_raw/wiki.test.raw", kind="perplexity", text="{{page}}",
             metrics=("word_perplexity", "byte_perplexity", "bits_per_byte")),
        Task("gsm8k", data="eval/gsm8k/test.jsonl", kind="generate", text="Question: {{question}}\nAnswer:",
             gold="answer", fewshot_data="eval/gsm8k/train.jsonl", num_fewshot=5, scorer="gsm8k",
             until=("Question:", "</s>", "<|im_end|>"), max_tokens=256,
             metrics=("exact_match_strict", "exact_match_flexible")),
        _suite("triviaqa", file="triviaqa_sm_sub", kind="generate", text="{{context}}", gold="aliases",
               scorer="triviaqa", until=("\n", ".", ","), max_tokens=32, metrics=("exact_match",)),
        _suite("humaneval", file="human_eval", kind="generate", text="{{prompt}}", gold="task_id",
               scorer="humaneval", until=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_tokens=384,
               target_delimiter="", metrics=("pass@1",)),
    ]
    + [_mmlu(s, cloze) for s in MMLU_SUBJECTS for cloze in (False, True)]
}  # fmt: skip
GROUPS = {
    "mmlu": [f"mmlu_{s}" for s in MMLU_SUBJECTS],
    "mmlu_cloze": [f"mmlu_cloze_{s}" for s in MMLU_SUBJECTS],
}
DEFAULT_SUITE = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande")


def load_task_file(path: Path) -> Task:
    """A user's task from a JSON or YAML file with Task's fields; an unknown field is an error naming it."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(
            f"{path}: a task file holds one mapping of fields, e.g. name, data, text, choices, gold"
        )
    known = {f.name for f in fields(Task)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(
            f"{path}: unknown task field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for required in ("name", "data"):
        if required not in spec:
            raise ValueError(f"{path}: the task needs a {required!r} field")
    data = Path(spec["data"])
    if not data.is_absolute():  # a user's data file sits next to its task file
        spec["data"] = str((path.parent / data).resolve())
    return Task(**spec)


def resolve_tasks(names: str | list[str]) -> list[Task]:
    """Task names (comma-separated), groups (mmlu, mmlu_cloze) or task files → Tasks, in order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[Task] = []
    for name in names:
        if name in GROUPS:
            out += [BUILTIN[n] for n in GROUPS[name]]
        elif name in BUILTIN:
            out.append(BUILTIN[name])
        elif name.endswith((".yaml", ".yml", ".json")):
            out.append(load_task_file(Path(name)))
        else:
            listed = ", ".join(n for n in BUILTIN if not n.startswith("mmlu_"))
            raise ValueError(
                f"unknown task {name!r}. Tasks: {listed}; groups: mmlu, mmlu_cloze (or mmlu_<subject>, "
                f"mmlu_cloze_<subject>); or a .yaml/.json task file"
            )
    if not out:
        raise ValueError("no tasks given")
    return out
