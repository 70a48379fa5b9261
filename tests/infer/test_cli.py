"""`lmforge generate` and `lmforge chat` with the real default model, run as a user runs them."""

from __future__ import annotations

import io
import json

import pytest

from lmforge.cli import main
from lmforge.infer.chat import ChatSession, run_chat


def test_generate_json_reports_counts_and_speeds(capsys):
    main(["generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "16",
          "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert "Paris" in out["text"]
    assert out["prompt_tokens"] > 5 and 1 <= out["completion_tokens"] <= 16
    assert out["prefill_tokens_per_s"] > 0 and out["time_to_first_token_s"] > 0


@pytest.mark.parametrize("drafter", ["ngram", "layerskip"])
def test_speculative_generate_gives_the_plain_greedy_text(drafter, capsys):
    argv = ["generate", "--prompt", "Repeat exactly: the cat sat on the mat, the cat sat on the mat.",
            "--temperature", "0", "--max-tokens", "24", "--json"]  # fmt: skip
    main(argv)
    plain = json.loads(capsys.readouterr().out)
    main(argv + ["--speculative", drafter, "--num-draft", "3"])
    fast = json.loads(capsys.readouterr().out)
    assert fast["text"] == plain["text"] and fast["completion_tokens"] == plain["completion_tokens"]
    assert fast["speculative"]["drafted"] > 0 and 0 <= fast["speculative"]["acceptance_rate"] <= 1


def test_generate_reads_stdin_and_obeys_a_choice(capsys, monkeypatch):
    monkeypatch.setattr(
        "sys.stdin",
        io.StringIO(
            "Is the sentiment of this review positive, negative or neutral?\n\n"
            "Review: I absolutely loved this film! The acting was wonderful and I would happily watch it again."
        ),
    )
    main(["generate", "--temperature", "0", "--choice", "positive", "negative", "neutral"])
    assert capsys.readouterr().out.strip() == "positive"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--prompt", "hi", "--temperature", "-1"], "temperature must be >= 0"),
        (["generate", "--prompt", "hi", "--top-p", "1.5"], "top_p must be in"),
        (["generate", "no-such-model", "--prompt", "hi"], "smollm2-135m-instruct"),
        (["generate", "--prompt", "hi", "--json-schema", "{not json"], "cannot compile JSON schema"),
        (
            ["generate", "--prompt", "hi", "--compile", "--speculative", "ngram"],
            "does not combine with --compile",
        ),
    ],
)
def test_bad_input_is_a_clear_message(argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert message in str(e.value)


def test_non_utf8_stdin_is_a_clear_message(monkeypatch):
    class Stdin:
        buffer = io.BytesIO(b"caf\xe9 au lait")

    monkeypatch.setattr("sys.stdin", Stdin())
    with pytest.raises(SystemExit, match="not UTF-8 text"):
        main(["generate"])


def test_chat_keeps_history_and_obeys_commands():
    import lmforge

    model = lmforge.load_model("smollm2-135m-instruct")
    session = ChatSession(model, max_tokens=24, sampling={"temperature": 0})
    out = io.StringIO()
    run_chat(session, io.StringIO("My name is Ada.\nWhat is my name?\n"), out)
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2
    assert session.history[0]["content"] == "My name is Ada."
    follow_up = session.messages("And again?")  # what the next turn renders: the whole conversation
    assert follow_up[:4] == session.history and follow_up[-1]["content"] == "And again?"
    assert session.history[3]["content"] in out.getvalue()  # and was printed
    run_chat(session, io.StringIO("/system You are a pirate.\n/help\n/reset\n/quit\nnever read\n"), out)
    assert session.history == [] and session.system == "You are a pirate."
    assert "new conversation" in out.getvalue() and "/reset" in out.getvalue()
