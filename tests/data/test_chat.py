import json

import pytest

from lmforge.data.chat import parse_hh, read_conversations, read_preferences, row_to_messages, row_to_pair


def test_alpaca_with_input_history_and_placeholders():
    row = {
        "instruction": "Who are {{name}}?",
        "input": "be brief",
        "output": "I am {{name}}.",
        "history": [["hi", "hello"]],
    }
    msgs = row_to_messages(row, replacements={"{{name}}": "Forge"})
    assert msgs == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Who are Forge?\n\nbe brief"},
        {"role": "assistant", "content": "I am Forge."},
    ]


def test_sharegpt_tools_become_system_tool_call_and_tool_turns():
    row = {
        "conversations": [
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "w"}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ],
        "tools": '[{"name": "w"}]',
    }
    msgs = row_to_messages(row)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert (
        msgs[2]["content"] == '<tool_call>{"name": "w"}</tool_call>' and '"name": "w"' in msgs[0]["content"]
    )


def test_openai_jsonl_file_and_bad_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = {"messages": [{"role": "user", "content": "only a question"}]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"row 1: no assistant turn"):
        read_conversations(f)
    assert read_conversations(f, on_bad="skip") == [good["messages"]]
    with pytest.raises(ValueError, match="unknown chat format"):
        row_to_messages({"text": "x"})


def test_hh_transcripts_and_identical_pairs():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a pen trick?\n\nAssistant: Spin it."
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a pen trick?\n\nAssistant: No."
    pair = row_to_pair({"chosen": c, "rejected": r})
    assert pair.prompt[-1] == {"role": "user", "content": "a pen trick?"} and len(pair.prompt) == 3
    assert (pair.chosen, pair.rejected) == ("Spin it.", "No.")
    with pytest.raises(ValueError, match="identical"):
        row_to_pair({"chosen": c, "rejected": c})
    with pytest.raises(ValueError, match="does not end with an Assistant"):
        parse_hh("\n\nHuman: hi")


def test_real_data_sets_read(data):
    ident = read_conversations(
        data / "chat" / "identity.json", replacements={"{{name}}": "Forge", "{{author}}": "lmforge"}
    )
    assert len(ident) == 91 and "Forge" in ident[0][-1]["content"] and "{{" not in json.dumps(ident)
    assert len(read_conversations(data / "chat" / "glaive_toolcall_en_demo.json")) == 300
    hh = read_preferences(data / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz", on_bad="skip")
    assert len(hh) > 2200 and all(p.chosen != p.rejected for p in hh)
    assert len(read_preferences(data / "preference" / "dpo_en_demo.json")) == 300
