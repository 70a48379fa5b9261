"""Chat data sets in the formats people have, read into one form: a list of OpenAI-style messages.

Fine-tuning data comes in a few shapes, and every trainer downstream wants the same thing — a
conversation as ``[{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]`` that the model's
own chat template can render. This module is only that conversion, with errors that name the file, the
row and the field:

- Alpaca (Taori et al. 2023): ``{"instruction", "input", "output"}`` (+ optional ``system`` and
  ``history`` as ``[[user, assistant], ...]``). The user turn is the instruction, then a blank line and
  the input when there is one — the layout LLaMA-Factory and most Alpaca loaders use.
- ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation",
  "value": ...}], "tools": "..."}``. A function call is an assistant turn (the model must learn to write
  it) wrapped in ``<tool_call>`` tags; an observation is a ``tool`` turn (the model reads it); the tool
  definitions go into the system message, since most small models' templates (SmolLM2's ChatML
  included) have no tools slot.
- OpenAI: ``{"messages": [{"role", "content"}], "tools": [...]}`` per JSONL line.
- Preference pairs: ShareGPT with ``chosen``/``rejected`` turns (LLaMA-Factory's ``dpo_en_demo``), or
  Anthropic HH-RLHF's two transcripts ``"\\n\\nHuman: …\\n\\nAssistant: …"`` that share a prefix.

``replacements`` fills placeholders such as ``{{name}}`` (identity data sets ship with them).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


@dataclass
class PreferencePair:
    """One prompt (the conversation so far) and two candidate assistant replies, the first preferred."""

    prompt: Messages
    chosen: str
    rejected: str


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSON array, or JSON Lines (optionally gzipped), as a list of dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON or JSON Lines: {e}") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: row {i} is a {type(r).__name__}, expected a JSON object")
    return rows


def _fill(text: Any, replacements: Mapping[str, str] | None, where: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a string, got {type(text).__name__}")
    for k, v in (replacements or {}).items():
        text = text.replace(k, v)
    return text


def detect_format(row: Mapping[str, Any]) -> str:
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    raise ValueError(
        f"unknown chat format with fields {sorted(row)}: expected alpaca (instruction/input/output), "
        "sharegpt (conversations) or openai (messages)"
    )


def _tools_system(tools: Any, system: str) -> str:
    if not tools:
        return system
    text = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
    head = f"{system}\n\n" if system else ""
    return head + (
        "You have access to the following tools. To call one, reply with "
        '<tool_call>{"name": ..., "arguments": ...}</tool_call>.\n' + text
    )


def row_to_messages(
    row: Mapping[str, Any],
    fmt: str = "auto",
    replacements: Mapping[str, str] | None = None,
    where: str = "row",
) -> Messages:
    """One data-set row → messages. Raises ValueError naming ``where`` and the field on bad input."""
    fmt = detect_format(row) if fmt == "auto" else fmt
    msgs: Messages = []
    if fmt == "alpaca":
        if row.get("system"):
            msgs.append({"role": "system", "content": _fill(row["system"], replacements, f"{where}.system")})
        for j, pair in enumerate(row.get("history") or []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ValueError(f"{where}.history[{j}]: expected [user, assistant]")
            msgs.append({"role": "user", "content": _fill(pair[0], replacements, f"{where}.history[{j}]")})
            msgs.append(
                {"role": "assistant", "content": _fill(pair[1], replacements, f"{where}.history[{j}]")}
            )
        user = _fill(row.get("instruction"), replacements, f"{where}.instruction")
        extra = row.get("input") or ""
        if extra:
            user += "\n\n" + _fill(extra, replacements, f"{where}.input")
        msgs.append({"role": "user", "content": user})
        msgs.append(
            {"role": "assistant", "content": _fill(row.get("output"), replacements, f"{where}.output")}
        )
    elif fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise ValueError(f"{where}.conversations: expected a list of {{from, value}} turns")
        system = _fill(row.get("system") or "", replacements, f"{where}.system")
        for j, t in enumerate(turns):
            who = t.get("from") if isinstance(t, dict) else None
            if who not in _SHAREGPT_ROLES:
                raise ValueError(
                    f"{where}.conversations[{j}].from: {who!r} is not one of {sorted(_SHAREGPT_ROLES)}"
                )
            text = _fill(t.get("value"), replacements, f"{where}.conversations[{j}].value")
            if who == "system":
                system = text
                continue
            if who == "function_call":
                text = f"<tool_call>{text}</tool_call>"
            msgs.append({"role": _SHAREGPT_ROLES[who], "content": text})
        system = _tools_system(row.get("tools"), system)
        if system:
            msgs.insert(0, {"role": "system", "content": system})
    elif fmt == "openai":
        raw = row.get("messages")
        if not isinstance(raw, list):
            raise ValueError(f"{where}.messages: expected a list of {{role, content}}")
        for j, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"{where}.messages[{j}].role: expected system, user, assistant or tool")
            content = m.get("content")
            if content is None and m.get("tool_calls"):  # an assistant turn that only calls tools
                content = "".join(
                    f"<tool_call>{json.dumps(c.get('function', c), ensure_ascii=False)}</tool_call>"
                    for c in m["tool_calls"]
                )
            msgs.append(
                {"role": m["role"], "content": _fill(content, replacements, f"{where}.messages[{j}]")}
            )
        if row.get("tools"):
            if msgs and msgs[0]["role"] == "system":
                msgs[0]["content"] = _tools_system(row["tools"], msgs[0]["content"])
            else:
                msgs.insert(0, {"role": "system", "content": _tools_system(row["tools"], "")})
    else:
        raise ValueError(f"unknown chat format {fmt!r}: choose auto, alpaca, sharegpt or openai")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        roles = [m["role"] for m in msgs]
        raise ValueError(f"{where}: no assistant turn to learn from (roles: {roles})")
    return msgs


def _convert_all(
    path: str | os.PathLike, convert: Callable[[dict, str], Any], on_bad: str, what: str
) -> list:
    """``convert`` every row of a data file; on_bad "skip" drops (and counts) the rows it rejects."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    out, bad = [], 0
    for i, row in enumerate(read_records(path)):
        try:
            out.append(convert(row, f"{path}: row {i}"))
        except ValueError:
            if on_bad == "error":
                raise
            bad += 1
    if bad:
        print(f"{path}: skipped {bad} bad rows of {bad + len(out)}")
    if not out:
        raise ValueError(f"{path}: no usable {what}")
    return out


def read_conversations(
    path: str | os.PathLike,
    fmt: str = "auto",
    replacements: Mapping[str, str] | None = None,
    on_bad: str = "error",
) -> list[Messages]:
    """Every row of a chat data set as messages. ``on_bad="skip"`` drops bad rows (and says how many)."""
    return _convert_all(
        path, lambda row, where: row_to_messages(row, fmt, replacements, where), on_bad, "conversation"
    )


def parse_hh(transcript: str, where: str = "row") -> Messages:
    """Anthropic HH-RLHF's ``\\n\\nHuman: …\\n\\nAssistant: …`` transcript → messages."""
    msgs: Messages = []
    for part in transcript.split("\n\n"):
        for tag, role in (("Human:", "user"), ("Assistant:", "assistant")):
            if part.startswith(tag):
                msgs.append({"role": role, "content": part[len(tag) :].strip()})
                break
        else:
            if not msgs:
                if part.strip():
                    raise ValueError(f"{where}: text before the first 'Human:' turn")
                continue
            msgs[-1]["content"] += "\n\n" + part  # a paragraph break inside a turn
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the transcript does not end with an Assistant turn")
    return msgs


def row_to_pair(
    row: Mapping[str, Any], replacements: Mapping[str, str] | None = None, where: str = "row"
) -> PreferencePair:
    """A preference row (ShareGPT chosen/rejected, or HH-RLHF transcripts) → PreferencePair."""
    if isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        c, r = parse_hh(row["chosen"], f"{where}.chosen"), parse_hh(row["rejected"], f"{where}.rejected")
        if c[:-1] != r[:-1]:
            raise ValueError(f"{where}: chosen and rejected transcripts differ before their last turn")
        pair = PreferencePair(
            c[:-1], _fill(c[-1]["content"], replacements, where), _fill(r[-1]["content"], replacements, where)
        )
    elif "conversations" in row and isinstance(row.get("chosen"), dict):
        prompt = [
            {
                "role": _SHAREGPT_ROLES.get(t.get("from"), "user"),
                "content": _fill(t.get("value"), replacements, where),
            }
            for t in row["conversations"]
        ]
        if row.get("system"):
            prompt.insert(0, {"role": "system", "content": row["system"]})
        pair = PreferencePair(
            prompt,
            _fill(row["chosen"].get("value"), replacements, f"{where}.chosen.value"),
            _fill(row["rejected"].get("value"), replacements, f"{where}.rejected.value"),
        )
    else:
        raise ValueError(
            f"{where}: expected a preference pair (HH-RLHF 'chosen'/'rejected' transcripts, or ShareGPT "
            f"'conversations' + 'chosen'/'rejected' turns), got fields {sorted(row)}"
        )
    if not pair.prompt or pair.prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the prompt must end with a user turn")
    if pair.chosen.strip() == pair.rejected.strip():
        raise ValueError(f"{where}: chosen and rejected answers are identical: nothing to prefer")
    return pair


def read_preferences(
    path: str | os.PathLike, replacements: Mapping[str, str] | None = None, on_bad: str = "error"
) -> list[PreferencePair]:
    """Every row of a preference data set; ``on_bad="skip"`` drops (and counts) malformed pairs."""
    return _convert_all(
        path, lambda row, where: row_to_pair(row, replacements, where), on_bad, "preference pair"
    )
