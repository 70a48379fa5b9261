"""`lmforge speedrun`: every stage runs and the report card says what happened."""

from __future__ import annotations

from lmforge.cli import main


def test_speedrun_writes_a_report(tmp_path, capsys):
    corpus = tmp_path / "stories.txt"
    corpus.write_text(
        "\n\n".join(f"Once upon a time, a fox named Fox{i % 7} found a red ball." for i in range(600))
    )
    main(["speedrun", "--corpus", str(corpus), "--minutes", "0.1", "--vocab-size", "300", "--depth", "1",
          "--out-dir", str(tmp_path / "run")])  # fmt: skip
    report = (tmp_path / "run" / "report.md").read_text()
    assert "bits per byte" in report and "| tokenizer |" in report and "| total |" in report
    assert "parameters" in report and "Once upon a time" in report  # the sample starts from the prompt
    assert (tmp_path / "run" / "model" / "loss.png").is_file()
    assert "report:" in capsys.readouterr().out
