"""`lmforge eval` end to end on the real SmolLM2 GGUF: tables, files, the cache, --compare, bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lmforge.cli import main


def test_eval_cli_writes_results_and_reuses_its_cache(tmp_path, data, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache.sqlite"
    args = ["eval", "smollm2", "--tasks", "arc_easy,winogrande,lambada", "--limit", "4",
            "--data", str(data), "--out-dir", str(out), "--cache", str(cache)]  # fmt: skip
    main(args)
    printed = capsys.readouterr().out
    assert "| arc_easy | 4 | 0 | acc_norm |" in printed and "| lambada | 4 | 0 | perplexity |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert [r["task"] for r in results["results"]] == ["arc_easy", "winogrande", "lambada"]
    assert (out / "results.png").stat().st_size > 1000
    n_cached = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert n_cached == 4 * 4 + 4 * 2 + 4  # every (context, continuation) request
    main(args + ["--out-dir", str(tmp_path / "again")])  # all from the cache: the same numbers
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [r["metrics"] for r in again["results"]] == [r["metrics"] for r in results["results"]]
    capsys.readouterr()
    main(["eval", "--compare", str(out), str(tmp_path / "again"), "--plot", str(tmp_path / "cmp.png")])
    assert "| arc_easy | acc_norm |" in capsys.readouterr().out
    assert (tmp_path / "cmp.png").is_file()


def test_eval_cli_bad_input(tmp_path, data):
    with pytest.raises(SystemExit, match="unknown task 'hellaswg'"):
        main(["eval", "smollm2", "--tasks", "hellaswg"])
    with pytest.raises(SystemExit, match="name a model"):
        main(["eval", "--tasks", "arc_easy"])
    with pytest.raises(SystemExit, match="not an lmforge eval results.json"):
        main(["eval", "--compare", str(tmp_path)])
