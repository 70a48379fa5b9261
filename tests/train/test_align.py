"""lmforge reward | dpo | ppo | grpo | distill end to end through the CLI, on tiny models saved as Hugging Face
folders with SmolLM2's real tokenizer and chat template: each writes its result, metrics and curves."""

import json
import random

import pytest
import torch

from lmforge.cli import main
from lmforge.model.config import ModelConfig
from lmforge.model.export import save_hf
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import load_tokenizer
from lmforge.train.align import load_reward_model, split
from lmforge.train.verifiable import arithmetic, exact_answer, final_integer

WORDS = ["cats", "tea", "rain", "music", "maps", "bread", "trains", "snow", "books", "coffee"]


@pytest.fixture(scope="module")
def folders(smollm2_gguf, tmp_path_factory):
    """Two tiny llama models (the policy / student and a teacher) with SmolLM2's tokenizer."""
    tok = load_tokenizer(smollm2_gguf)
    out = {}
    for name, seed in (("policy", 0), ("teacher", 1)):
        torch.manual_seed(seed)
        m = Transformer(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=tok.vocab_size,
                                    ffn_dim=64, family="llama", max_seq_len=512, tie_embeddings=True))  # fmt: skip
        m.tokenizer = tok
        out[name] = str(save_hf(m, tmp_path_factory.mktemp(name)))
    return out


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    """HH-RLHF-style rows: the polite answer is chosen."""
    rnd = random.Random(0)
    rows = []
    for _ in range(24):
        w = rnd.choice(WORDS)
        rows.append({"chosen": f"\n\nHuman: What about {w}?\n\nAssistant: Thank you, I like {w}.",
                     "rejected": f"\n\nHuman: What about {w}?\n\nAssistant: No. {w} is bad."})  # fmt: skip
    path = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run(capsys, *argv) -> dict:
    main(list(argv))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_split_is_fixed_and_disjoint():
    a, b = split(range(20), 5, seed=3)
    assert (a, b) == split(range(20), 5, seed=3) and len(b) == 5 and not set(a) & set(b)
    few, same = split(range(20), 5, seed=3, limit=4)
    assert same == b and few == a[:4]  # less training data, the same held-out rows
    with pytest.raises(ValueError, match="leaves no training data"):
        split(range(3), 3, 0)


def test_verifiable_arithmetic():
    ps = arithmetic(50, seed=1)
    assert ps == arithmetic(50, seed=1) and len({p.question for p in ps}) > 40
    p = ps[0]
    a, op, b = p.question.split()[2:5]
    assert p.answer == (int(a) + int(b.rstrip("?")) if op == "+" else int(a) - int(b.rstrip("?")))
    assert final_integer("It is -12, I think 5") == 5 and final_integer("1,024 - 3 = -1") == -1
    assert final_integer("none") is None
    assert exact_answer(f"{a} {op} {b} = {p.answer}.", p.answer) == 1.0 and exact_answer("8 or 9", 8) == 0.0


def test_reward_head_then_ppo(tmp_path, folders, prefs, capsys):
    out = tmp_path / "rm"
    s = run(capsys, "reward", "--model", folders["policy"], "--data", prefs, "--heldout", "6", "--method", "head",
            "--l2", "0.1", "--out-dir", str(out))  # fmt: skip
    assert s["train_pairs"] == 18 and s["heldout_pairs"] == 6
    assert s["heldout_accuracy"] == 1.0  # the ending separates the answers; a frozen random body sees it
    rm, tok = load_reward_model(out / "reward_model")
    ids = tok.encode("hello")
    assert torch.isfinite(rm(torch.tensor([ids]), torch.tensor([len(ids) - 1]))).all()
    assert (out / "metrics.jsonl").exists() and (out / "summary.json").exists()

    p = run(capsys, "ppo", "--model", folders["policy"], "--data", prefs, "--reward-model", str(out / "reward_model"),
            "--heldout", "3", "--steps", "2", "--prompts-per-step", "2", "--max-new-tokens", "4", "--lr", "1e-3",
            "--out-dir", str(tmp_path / "ppo"))  # fmt: skip
    assert p["heldout_prompts"] == 3 and isinstance(p["heldout_reward_after"], float) and p["max_kl"] >= 0
    assert (tmp_path / "ppo" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "ppo" / "curves.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="reward_model"):
        main(["ppo", "--model", folders["policy"], "--data", prefs, "--out-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="not a reward model folder"):
        main(["ppo", "--model", folders["policy"], "--data", prefs, "--reward-model", str(tmp_path),
              "--out-dir", str(tmp_path / "x")])  # fmt: skip


def test_reward_with_lora_saves_and_reloads_the_adapter(tmp_path, folders, prefs, capsys):
    s = run(capsys, "reward", "--model", folders["policy"], "--data", prefs, "--heldout", "6", "--method", "lora",
            "--epochs", "1", "--lr", "1e-3", "--out-dir", str(tmp_path))  # fmt: skip
    meta = json.loads((tmp_path / "reward_model" / "reward_config.json").read_text())
    assert meta["adapter"] and (tmp_path / "reward_model" / "adapter" / "adapter_config.json").exists()
    rm, tok = load_reward_model(tmp_path / "reward_model")
    from lmforge.data.chat import read_preferences
    from lmforge.train.align import split as split_rows
    from lmforge.train.pairs import tokenize_pairs
    from lmforge.train.reward import reward_metrics

    _, held = split_rows(read_preferences(prefs), 6, 0)
    again = reward_metrics(rm, tokenize_pairs(tok, held), tok.eos_id)
    assert again["accuracy"] == pytest.approx(s["heldout_accuracy"]) and again["margin"] == pytest.approx(
        s["heldout_margin"], abs=1e-4
    )


def test_dpo_raises_held_out_accuracy(tmp_path, folders, prefs, capsys):
    s = run(capsys, "dpo", "--model", folders["policy"], "--data", prefs, "--heldout", "6", "--epochs", "4",
            "--lr", "5e-3", "--beta", "0.5", "--lora-r", "8", "--out-dir", str(tmp_path))  # fmt: skip
    assert s["heldout_before"]["accuracy"] <= 0.5 < s["heldout_after"]["accuracy"]
    assert s["heldout_after"]["margin"] > s["heldout_before"]["margin"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "curves.png").exists()
    with pytest.raises(SystemExit, match="loss must be one of"):
        main(["dpo", "--data", prefs, "--loss", "kto"])


def test_grpo_and_distill_run_and_save(tmp_path, folders, capsys):
    g = run(capsys, "grpo", "--model", folders["policy"], "--heldout", "4", "--limit", "20", "--steps", "2",
            "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "3", "--out-dir", str(tmp_path / "g"))  # fmt: skip
    assert g["heldout_accuracy_before"] == 0.0 and g["heldout_accuracy_after"] is not None
    lines = (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "groups_with_signal" in json.loads(lines[1])
    with pytest.raises(SystemExit, match="task must be one of"):
        main(["grpo", "--model", folders["policy"], "--task", "chess"])

    chat = tmp_path / "chat.json"
    chat.write_text(
        json.dumps([{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}."} for w in WORDS])
    )
    d = run(capsys, "distill", "--model", folders["policy"], "--teacher", folders["teacher"], "--data", str(chat),
            "--heldout", "2", "--steps", "12", "--lr", "3e-3", "--batch-size", "2", "--seq-len", "64",
            "--out-dir", str(tmp_path / "d"))  # fmt: skip
    assert d["heldout_kd_after"] < d["heldout_kd_before"]
    assert (tmp_path / "d" / "model" / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="teacher"):
        main(["distill", "--model", folders["policy"], "--data", str(chat)])


RESUMABLE = {
    "reward": ["--data", "PREFS", "--heldout", "6", "--method", "lora", "--batch-size", "3", "--lr", "1e-3"],
    "dpo": ["--data", "PREFS", "--heldout", "6", "--batch-size", "3", "--lr", "5e-3", "--lora-dropout", "0.1"],
    "ppo": ["--data", "PREFS", "--reward-model", "RM", "--heldout", "3", "--steps", "6", "--prompts-per-step", "2",
            "--max-new-tokens", "4", "--lr", "1e-3", "--lora-dropout", "0.1"],
    "grpo": ["--heldout", "4", "--limit", "20", "--steps", "6", "--group-size", "2", "--prompts-per-step", "2",
             "--max-new-tokens", "3", "--lr", "1e-3"],
    "distill": ["--teacher", "TEACHER", "--data", "CHAT", "--heldout", "2", "--steps", "6", "--lr", "3e-3",
                "--batch-size", "2", "--seq-len", "64"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(RESUMABLE))
def test_a_run_resumed_from_its_checkpoint_logs_what_an_uninterrupted_run_logs(
    command, tmp_path, folders, prefs, capsys
):
    import shutil

    chat = tmp_path / "chat.json"
    chat.write_text(
        json.dumps([{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}."} for w in WORDS])
    )
    rm = tmp_path / "rm"
    if command == "ppo":
        run(capsys, "reward", "--model", folders["policy"], "--data", prefs, "--heldout", "6", "--method", "head",
            "--out-dir", str(rm))  # fmt: skip
    fill = {"PREFS": prefs, "RM": str(rm / "reward_model"), "TEACHER": folders["teacher"], "CHAT": str(chat)}
    argv = [
        command,
        "--model",
        folders["policy"],
        "--ckpt-every",
        "2",
        *(fill.get(a, a) for a in RESUMABLE[command]),
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    run(capsys, *argv, "--out-dir", str(full))  # 6 steps: checkpoints after steps 2 and 4
    saved = sorted((full / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in saved] == ["step_0000002.pt", "step_0000004.pt"]
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(saved[0], part / "checkpoints")  # as if the run had died during step 3
    run(capsys, *argv, "--out-dir", str(part))
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, part)]
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[0]]
    for a, b in zip(*logs):
        assert set(a) == set(b) and all(b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6) for k in a), (a, b)
    with pytest.raises(SystemExit, match="run of 6 steps"):  # a checkpoint of another run is not continued
        main(
            [*argv, "--out-dir", str(part)]
            + (["--epochs", "2"] if command in ("reward", "dpo") else ["--steps", "8"])
        )
