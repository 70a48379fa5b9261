"""`lmforge pretrain` end to end: raw text → shards → a trained model, checkpoints, logs; resume; errors."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main
from lmforge.tokenizer import BPETokenizer, train_bpe


@pytest.fixture
def run(tmp_path):
    text = "\n\n".join(f"Once upon a time a cat number {i} sat on a mat and was happy." for i in range(400))
    (tmp_path / "corpus.txt").write_text(text)
    vocab, merges = train_bpe(tmp_path / "corpus.txt", 320, ["<|endoftext|>"], progress=False)
    BPETokenizer(vocab, merges, ["<|endoftext|>"]).save(tmp_path / "tok.json")
    args = ["pretrain", "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(tmp_path / "tok.json"),
            "--depth", "1", "--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5",
            "--eval-every", "20", "--eval-batches", "2", "--ckpt-every", "20", "--log-every", "5",
            "--out-dir", str(tmp_path / "run"), "--sample-tokens", "8"]  # fmt: skip
    return tmp_path, args


def test_pretrain_learns_and_resumes(run, capsys):
    tmp_path, args = run
    main(args + ["--max-steps", "40"])
    out = capsys.readouterr().out
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 40 and records[0]["loss"] > 2 * records[-1]["loss"]  # it learned
    assert 0 < summary["val_bpb"] < 2 and "sample:" in out
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "shards" / "meta.json").is_file()
    main(args + ["--max-steps", "60"])  # continues from step 40's checkpoint
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 61))
    assert "resumed from step 40" in capsys.readouterr().out


def test_pretrain_bad_input(run, tmp_path):
    _, args = run
    (tmp_path / "bad.yaml").write_text("max_step: 3\n")
    for extra, message in [
        (["--config", str(tmp_path / "bad.yaml")], "unknown field(s) 'max_step'"),
        (["--objective", "span", "--loader", "packed"], "span reads random windows"),
        (["--data", str(tmp_path / "nope.txt")], "nope.txt does not exist"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args + extra)
        assert message in str(e.value)
