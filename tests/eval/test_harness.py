"""The harness: tasks render as lm-eval's, metrics by hand, the cache resumes, bad input is named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmforge.eval import report
from lmforge.eval.harness import Cache, Evaluator, group_averages
from lmforge.eval.loglik import Scored
from lmforge.eval.tasks import BUILTIN, Task, read_rows, resolve_tasks
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


class ByteTok:
    """Bytes as tokens (1..256), 0 is BOS/EOS; enough for the harness on a tiny random model."""

    bos_id, eos_id, add_bos, chat_template = 0, 0, False, None

    def encode(self, text):
        return [b + 1 for b in text.encode()]

    def decode(self, ids):
        return bytes(i - 1 for i in ids if i > 0).decode("utf-8", "replace")


def tiny_model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(dim=32, n_heads=4, n_layers=2, vocab_size=257, ffn_dim=48, max_seq_len=512))
    m.init_weights().eval()
    m.tokenizer = ByteTok()
    return m


def write_jsonl(path: Path, rows) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_builtin_prompts_are_lm_evals(data):
    arc = BUILTIN["arc_easy"].render(read_rows(BUILTIN["arc_easy"], data / BUILTIN["arc_easy"].data).rows[0])
    assert arc["text"].startswith("Question: ") and arc["text"].endswith("?\nAnswer:")
    hs = BUILTIN["hellaswag"]
    row = read_rows(hs, data / hs.data).rows[0]
    assert (
        row["query"]
        == "Pole vault: Pole vault is a sport where you run with a pole and stop and swing your body. A few women"
    )
    piqa = BUILTIN["piqa"]
    assert piqa.render(read_rows(piqa, data / piqa.data).rows[0])["text"].endswith("occupants?\nAnswer:")
    mmlu = BUILTIN["mmlu_anatomy"]
    pool = read_rows(mmlu, data / mmlu.fewshot_data).rows
    prefix = mmlu.fewshot_prefix({}, pool, 1)
    assert prefix.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert prefix.endswith("\nAnswer: D\n\n")  # the first dev question, answered, then the delimiter


def test_acc_and_acc_norm_by_hand(tmp_path, monkeypatch):
    rows = [
        {"query": "q1", "choices": ["a", "bbbb"], "gold": 1},
        {"query": "q2", "choices": ["cc", "d"], "gold": 0},
    ]
    task = Task("toy", data=str(write_jsonl(tmp_path / "toy.jsonl", rows)))
    ev = Evaluator(tiny_model(), progress=False)
    # row 1: -2 vs -4 → acc picks "a" (wrong); per character -2 vs -1 → acc_norm picks "bbbb" (right)
    # row 2: -3 vs -2 → acc picks "d" (wrong); per character -1.5 vs -2 → acc_norm picks "cc" (right)
    fake = {"q1": [-2.0, -4.0], "q2": [-3.0, -2.0]}

    def score(groups, desc):
        return [[Scored(lp, False, 1) for lp in fake[ByteTok().decode(g.context)]] for g in groups]

    monkeypatch.setattr(ev, "_score", score)
    r = ev.run(task, tmp_path)
    assert r["metrics"]["acc"] == 0.0 and r["metrics"]["acc_norm"] == 1.0
    assert r["rows"][0]["logliks"] == [-2.0, -4.0]


def test_cache_resumes_an_interrupted_run_and_a_rerun_computes_nothing(tmp_path, monkeypatch):
    import lmforge.eval.harness as harness

    rows = [{"query": f"question {i}", "choices": ["yes", "no", "maybe"], "gold": i % 3} for i in range(10)]
    task = Task("toy", data=str(write_jsonl(tmp_path / "toy.jsonl", rows)))
    monkeypatch.setattr(harness, "CHUNK", 4)
    full = Evaluator(tiny_model(), "m", Cache(None), progress=False).run(task, tmp_path)

    ev = Evaluator(tiny_model(), "m", Cache(tmp_path / "cache.sqlite"), progress=False)
    real, calls = ev.scorer.score, []

    def dies_on_second_chunk(groups, progress=None):
        calls.append(len(groups))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(groups, progress)

    monkeypatch.setattr(ev.scorer, "score", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        ev.run(task, tmp_path)
    calls.clear()
    monkeypatch.setattr(ev.scorer, "score", lambda g, p=None: (calls.append(len(g)), real(g, p))[1])
    resumed = ev.run(task, tmp_path)
    assert calls == [4, 2]  # the first chunk came from the cache
    assert resumed["metrics"] == full["metrics"]
    calls.clear()
    assert ev.run(task, tmp_path)["metrics"] == full["metrics"] and calls == []


def test_every_kind_runs_on_a_tiny_model(tmp_path):
    ev = Evaluator(tiny_model(), progress=False)
    wino = Task("w", data=str(write_jsonl(tmp_path / "w.jsonl", [{"context_options": ["A cat", "A dog"], "continuation": "barks.", "gold": 1}] * 3)),
                kind="partial", text="", choices="context_options", metrics=("acc",))  # fmt: skip
    lamb = Task("l", data=str(write_jsonl(tmp_path / "l.jsonl", [{"context": "one two", "continuation": "three"}] * 3)),
                kind="lambada", text="{{context}}", metrics=("acc", "perplexity"))  # fmt: skip
    ppl = Task("p", data=str(write_jsonl(tmp_path / "p.jsonl", [{"text": "some text " * 30}, {"text": "more"}])),
               kind="perplexity", text="{{text}}", metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"))  # fmt: skip
    for task in (wino, lamb, ppl):
        r = ev.run(task, tmp_path)
        assert all(v == v for k, v in r["metrics"].items() if not k.endswith("_stderr")), r["metrics"]
    m = r["metrics"]
    assert m["bits_per_byte"] == pytest.approx(math.log2(m["byte_perplexity"]))
    shots = ev.run(lamb, tmp_path, num_fewshot=2)
    assert shots["num_fewshot"] == 2


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'arc_eazy'.*arc_easy"):
        resolve_tasks("arc_eazy")
    path = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}, "{not json",
                                               {"query": "q", "choices": ["a"], "gold": 3}, {"choices": ["a"], "gold": 0}])  # fmt: skip
    task = Task("bad", data=str(path))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed row"):
        read_rows(task, path)
    rows = read_rows(task, path, on_bad_row="skip")
    assert len(rows.rows) == 1 and rows.skipped == 3
    with pytest.raises(FileNotFoundError, match="not found"):
        read_rows(task, tmp_path / "missing.jsonl")
    spec = tmp_path / "task.yaml"
    spec.write_text("name: mine\ndata: bad.jsonl\nprompt: oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown task field.*prompt"):
        resolve_tasks([str(spec)])
    with pytest.raises(ValueError, match="kind"):
        Task("k", data="x", kind="essay")
    with pytest.raises(ValueError, match="no chat template"):
        Evaluator(tiny_model(), chat=True)


def test_user_task_file(tmp_path):
    write_jsonl(
        tmp_path / "capitals.jsonl", [{"country": "France", "options": ["Paris", "Rome"], "answer": 0}] * 4
    )
    spec = tmp_path / "capitals.yaml"
    spec.write_text(
        "name: capitals\ndata: capitals.jsonl\ntext: 'The capital of {{country}} is'\n"
        "choices: options\ngold: answer\nmetrics: [acc]\n",
        encoding="utf-8",
    )
    (task,) = resolve_tasks([str(spec)])
    r = Evaluator(tiny_model(), progress=False).run(task, tmp_path, limit=3)
    assert r["n"] == 3 and set(r["metrics"]) == {"acc", "acc_stderr"}


def test_reports_and_group_average(tmp_path):
    results = [
        {"task": f"mmlu_{s}", "kind": "multiple_choice", "group": "mmlu", "n": 10, "skipped": 0, "num_fewshot": 0,
         "metrics": {"acc": a, "acc_stderr": 0.1}, "seconds": 1.0}
        for s, a in (("a", 0.2), ("b", 0.6))
    ]  # fmt: skip
    (avg,) = group_averages(results)
    assert avg["task"] == "mmlu" and avg["metrics"]["acc"] == pytest.approx(0.4)
    paths = report.write(results + [avg], tmp_path / "m1", "m1", {})
    assert paths["png"].stat().st_size > 1000
    assert "| mmlu | 20 | 0 | acc | 40.00 |" in paths["md"].read_text()
    other = [dict(r, metrics={"acc": 0.5, "acc_stderr": 0.1}) for r in results]
    report.write(other, tmp_path / "m2", "m2", {})
    table = report.compare(dict(report.load(tmp_path / p) for p in ("m1", "m2")))
    assert "| mmlu_a | acc | 20.00 ± 10.00 | 50.00 ± 10.00 |" in table


def test_fewshot_from_the_task_rows_is_lm_evals_draw(tmp_path):
    """Shots from the eval rows themselves: one Random(1234) for the task, advanced row by row, the row left out."""
    import random

    from lmforge.eval.tasks import sample_shots

    rows = [{"query": f"q{i}", "choices": ["a", "b"], "gold": i % 2} for i in range(6)]
    task = Task("toy", data=str(write_jsonl(tmp_path / "toy.jsonl", rows)))
    rnd, again = random.Random(1234), random.Random(1234)
    for row in rows:
        prefix = task.fewshot_prefix(row, rows, 3, rnd)
        want = sample_shots(rows, 3, rnd=again, exclude=row)
        assert prefix == "".join(task.shot(s) + "\n\n" for s in want)
        assert f"{row['query']} " not in prefix and prefix.count("\n\n") == 3
    with pytest.raises(ValueError, match="6 shots asked, 5 rows to draw from"):
        task.fewshot_prefix(rows[0], rows, 6, random.Random(0))
