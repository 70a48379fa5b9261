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


def test_eval_reads_our_own_training_checkpoints(tmp_path, capsys):
    """A pretraining run's step_*.pt (or its folder) evaluates like any model, with the run's tokenizer."""
    import torch

    import lmforge
    from lmforge.eval.harness import Evaluator
    from lmforge.eval.tasks import load_task_file
    from lmforge.tokenizer import BPETokenizer, load_tokenizer, train_bpe

    text = "\n\n".join(f"Once upon a time a cat number {i} sat on a mat and was happy." for i in range(200))
    (tmp_path / "corpus.txt").write_text(text)
    vocab, merges = train_bpe(tmp_path / "corpus.txt", 300, ["<|endoftext|>"], progress=False)
    BPETokenizer(vocab, merges, ["<|endoftext|>"]).save(tmp_path / "tok.json")
    main(["pretrain", "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(tmp_path / "tok.json"),
          "--depth", "1", "--seq-len", "32", "--batch-size", "8", "--lr", "1e-2", "--max-steps", "60",
          "--eval-every", "0", "--ckpt-every", "60", "--out-dir", str(tmp_path / "run"), "--sample-tokens", "0"])  # fmt: skip
    rows = [{"q": "Once upon a time a cat", "options": ["sat on a mat", "flew to the moon"], "answer": 0}] * 3
    (tmp_path / "cats.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "cats.yaml").write_text("name: cats\ndata: cats.jsonl\ntext: '{{q}}'\nchoices: options\n"
                                        "gold: answer\nmetrics: [acc]\n")  # fmt: skip
    ckpt = tmp_path / "run" / "step_0000060.pt"
    model = lmforge.load_model(ckpt)
    assert model.tokenizer is not None and model.tokenizer.encode("a cat") == load_tokenizer(
        tmp_path / "tok.json").encode("a cat")  # fmt: skip
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # the harness's Σ log p equals one plain forward pass of the loaded model
    task = load_task_file(tmp_path / "cats.yaml")
    result = Evaluator(model, progress=False).run(task, tmp_path, limit=1)
    tok = model.tokenizer
    ctx, full = (
        tok.encode(rows[0]["q"]),
        tok.encode(rows[0]["q"] + " " + rows[0]["options"][1]),
    )  # target_delimiter " "
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full[:-1]])).float(), -1)[0]
    want = sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full)))
    assert abs(result["rows"][0]["logliks"][1] - want) < 1e-4
    assert result["metrics"]["acc"] == 1.0  # 60 steps on this corpus: the cat sat, it did not fly
    for model_arg in (str(ckpt), str(tmp_path / "run")):  # the file, or the run folder (its latest)
        main(["eval", model_arg, "--tasks", str(tmp_path / "cats.yaml"), "--no-cache",
              "--out-dir", str(tmp_path / "out")])  # fmt: skip
        assert "| cats | 3 | 0 | acc | 100.00 |" in capsys.readouterr().out
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not an lmforge training checkpoint"):
        main(["eval", str(tmp_path / "other.pt"), "--tasks", str(tmp_path / "cats.yaml")])
    from lmforge.model.export import save_checkpoint

    save_checkpoint(model, tmp_path / "exported.safetensors")  # our exported format: weights, no tokenizer
    with pytest.raises(SystemExit, match="no tokenizer found with the model; pass --tokenizer"):
        main(["eval", str(tmp_path / "exported.safetensors"), "--tasks", str(tmp_path / "cats.yaml")])
    main(["eval", str(tmp_path / "exported.safetensors"), "--tokenizer", str(tmp_path / "tok.json"),
          "--tasks", str(tmp_path / "cats.yaml"), "--no-cache", "--out-dir", str(tmp_path / "out")])  # fmt: skip
    assert "| cats | 3 | 0 | acc | 100.00 |" in capsys.readouterr().out
    from lmforge.model.export import save_hf

    save_hf(model, tmp_path / "hf")  # a Hugging Face folder, its tokenizer.json included
    for extra in ([], ["--dtype", "bfloat16"], ["--quantize", "int8"]):
        main(["eval", str(tmp_path / "hf"), "--tasks", str(tmp_path / "cats.yaml"), "--no-cache",
              "--out-dir", str(tmp_path / "out"), *extra])  # fmt: skip
        assert "| cats | 3 | 0 | acc | 100.00 |" in capsys.readouterr().out, extra
