"""Constrained decoding on the real SmolLM2: every output parses and validates, masks are exact, errors clear."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

import lmforge
from lmforge.infer import constrained
from lmforge.infer.constrained import (
    apply_constraint,
    choice_constraint,
    end_ids,
    json_object_constraint,
    json_schema_constraint,
    regex_constraint,
)
from lmforge.infer.generate import stream_ids
from lmforge.infer.sampling import SamplingParams
from lmforge.tokenizer import load_tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def smol():
    return lmforge.load_model("smollm2-135m-instruct")


def generate(model, question: str, constraint, temperature: float = 0.0, seed: int = 0, max_new: int = 96):
    """The library's decode loop (`stream_ids`), which masks each step's logits with the constraint."""
    tok = model.tokenizer
    ids = torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]))])
    params = SamplingParams(temperature=temperature, seed=seed)
    out = list(stream_ids(model, ids, max_new, params, set(end_ids(tok)), constraint))
    assert len(out) < max_new, f"no end within {max_new} tokens: {tok.decode(out)!r}"
    return tok.decode(out)


def ids_of(mask: torch.Tensor) -> set[int]:
    return set(mask.nonzero().flatten().tolist())


def test_json_schema_greedy_and_sampled_outputs_validate(smol):
    question = "Describe a fictional person as JSON: name, age, mood and a few hobbies."
    base = json_schema_constraint(PERSON, smol.tokenizer, smol.config.vocab_size)
    outputs = [generate(smol, question, base.clone())]
    outputs += [generate(smol, question, base.clone(), temperature=1.0, seed=s) for s in range(5)]
    for text in outputs:
        jsonschema.validate(json.loads(text), PERSON)
    assert len(set(outputs)) >= 3, outputs  # sampling really varies within the schema
    assert base.ids == []  # clones never touched the original


def test_json_object_mode(smol):
    question = 'Reply in JSON with keys "city" and "country": where is the Eiffel Tower?'
    answer = json.loads(generate(smol, question, json_object_constraint(smol.tokenizer)))
    assert isinstance(answer, dict) and answer.get("city") == "Paris"


@pytest.mark.parametrize(
    "pattern, question",
    [
        (r"[0-9]{4}-[0-9]{2}-[0-9]{2}", "What is the date of the first moon landing? Answer as YYYY-MM-DD."),
        (r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", "Write a US phone number for a pizza shop."),
    ],
)
def test_regex_output_fullmatches(smol, pattern, question):
    for temperature, seed in [(0.0, 0), (1.0, 1)]:
        text = generate(smol, question, regex_constraint(pattern, smol.tokenizer), temperature, seed)
        assert re.fullmatch(pattern, text), text


def test_choice_picks_the_obvious_sentiment(smol):
    choices = ["positive", "negative", "neutral"]
    review = "I absolutely loved this film! The acting was wonderful and I would happily watch it again."
    question = f"Is the sentiment of this review positive, negative or neutral?\n\nReview: {review}"
    assert generate(smol, question, choice_constraint(choices, smol.tokenizer)) == "positive"
    for seed in range(3):
        assert generate(smol, question, choice_constraint(choices, smol.tokenizer), 1.0, seed) in choices


def test_masks_exclude_tokens_that_break_json(smol):
    tok = smol.tokenizer
    c = json_schema_constraint(PERSON, tok, smol.config.vocab_size + 64)  # 64 padding ids past the tokenizer
    ends = set(end_ids(tok))
    assert c.allowed().shape == (smol.config.vocab_size + 64,)
    assert not c.allowed()[tok.vocab_size :].any()
    assert not ends & ids_of(c.allowed())  # nothing written yet: not complete

    def feed(text: str) -> None:
        for i in tok.encode(text):
            c.advance(i)
            assert not c.allowed()[tok.vocab_size :].any()

    close, space, newline = tok.token_to_id("}"), tok.token_to_id(" "), tok.token_to_id("\n")
    feed('{"name":')
    assert not c.allowed()[close] and not c.allowed()[newline]
    feed(' "A')
    assert c.allowed()[close]  # inside a string "}" is just a character
    feed('da"')
    # "age" is required and the separators are fixed: only tokens starting with "," may follow, no free
    # whitespace that a greedy model could repeat forever.
    after = ids_of(c.allowed())
    assert after and all(tok.decode_bytes([i]).startswith(b",") for i in after)
    assert close not in after and space not in after
    with pytest.raises(ValueError, match="not allowed"):
        c.advance(close)
    with pytest.raises(ValueError, match="not allowed"):
        c.advance(tok.vocab_size + 3)  # a padding id
    assert ids_of(c.allowed()) == after  # a refused token leaves the state as it was
    for text, ok in [
        (', "age": 42', True),
        (', "age": 5,', False),  # below the minimum
        (', "age": 100', False),  # above the maximum
        (', "mood"', False),  # the required "age" skipped
        (', "age": 42, "mood": "angry"', False),  # not in the enum
        (', "age": 42, "mood": "sad", "hobbies": ["a", "b", "c"]', True),
        (', "age": 42, "mood": "sad", "hobbies": ["a", "b", "c", ', False),  # maxItems
        (', "age": 42, "mood": "sad", "pets"', False),  # additionalProperties: false
    ]:
        assert accepts(c.clone(), tok, text) == ok, text
    feed(', "age": 42, "mood": "calm"')
    assert close in ids_of(c.allowed()) and not ends & ids_of(c.allowed())  # "hobbies" or "}" must follow
    feed("}")
    assert c.is_done() and ids_of(c.allowed()) == ends
    c.advance(tok.eos_id)


def accepts(c, tok, text: str) -> bool:
    try:
        for i in tok.encode(text):
            c.advance(i)
    except ValueError:
        return False
    return True


def _regex_prefix_ok(template: str, data: bytes) -> bool:
    """Is data a prefix of some string of `template` (d = an ASCII digit, other characters literal)?"""
    return len(data) <= len(template) and all(
        chr(b).isdigit() and b < 128 if t == "d" else b == ord(t) for t, b in zip(template, data)
    )


@pytest.mark.parametrize("tokenizer", ["smollm2", "gemma3"])
def test_regex_mask_is_exactly_the_valid_tokens(tokenizer, smol, gemma_gguf):
    tok = smol.tokenizer if tokenizer == "smollm2" else load_tokenizer(gemma_gguf)  # byte BPE, SentencePiece
    template, text = "dddd-dd-dd", "2024-05-17"
    c = regex_constraint(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", tok)
    vocab = [tok.decode_bytes([i]) for i in range(tok.vocab_size)]
    done = b""
    for ch in text:
        brute = {i for i, b in enumerate(vocab) if b and _regex_prefix_ok(template, done + b)}
        got = ids_of(c.allowed())
        # Sound: every allowed token keeps the output valid. Where nothing is forced, complete too (where a
        # byte is forced, the engine may keep only its canonical token, which is fine).
        assert got and got <= brute
        if ch.isdigit():
            assert got == brute, sorted(brute - got)[:10]
        c.advance(tok.token_to_id(ch))
        done += ch.encode()
    assert c.is_done() and ids_of(c.allowed()) == set(end_ids(tok))


def test_compilation_is_cached(smol):
    tok = smol.tokenizer
    compiled = constrained._compiled_for(tok, None)
    assert constrained._compiled_for(tok, None) is compiled  # the tokenizer-side index: built once
    before = len(compiled.grammars)
    schema = {**PERSON, "title": "cache test"}
    a = json_schema_constraint(schema, tok)
    b = json_schema_constraint(json.dumps(schema), tok)  # the same schema as text
    assert len(compiled.grammars) == before + 1  # compiled once, shared
    assert a._compiled is b._compiled is compiled and a._matcher is not b._matcher  # separate states
    a.advance(tok.encode('{"')[0])
    assert b.ids == [] and ids_of(b.allowed()) == {tok.encode('{"')[0]}


@pytest.mark.parametrize(
    "schema, reason",
    [
        ([1, 2], "expected a JSON object"),
        ("{not json", "invalid JSON"),
        ({"type": "wat"}, "Invalid type"),
        ({"type": "object", "if": {}, "then": {}}, "Unimplemented"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
        ({"type": "string", "pattern": "(("}, "unclosed group"),
    ],
)
def test_bad_schemas_raise_a_clear_error(smol, schema, reason):
    with pytest.raises(ValueError, match=rf"(?s)^cannot compile JSON schema: .*{reason}"):
        json_schema_constraint(schema, smol.tokenizer)


def test_bad_regexes_choices_and_masks_raise(smol):
    tok = smol.tokenizer
    with pytest.raises(ValueError, match="(?s)^cannot compile regex: .*unclosed group"):
        regex_constraint("((", tok)
    with pytest.raises(ValueError, match="^cannot compile regex: expected a string"):
        regex_constraint(None, tok)
    for bad in [[], ["a", ""], "abc", [1]]:
        with pytest.raises(ValueError, match="^cannot compile choice"):
            choice_constraint(bad, tok)
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        regex_constraint("a", tok, vocab_size=0)
    with pytest.raises(ValueError, match="bool"):
        apply_constraint(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="covers 5 ids"):
        apply_constraint(torch.zeros(4), torch.ones(5, dtype=torch.bool))


def test_apply_constraint_shapes():
    logits = torch.arange(12.0).reshape(2, 6)
    allowed = torch.tensor([True, False, True, False, True])  # shorter: id 5 is padding
    out = apply_constraint(logits, allowed)
    assert out.shape == (2, 6) and out[:, [0, 2, 4]].equal(logits[:, [0, 2, 4]])
    assert torch.isneginf(out[:, [1, 3, 5]]).all()
    assert torch.isneginf(apply_constraint(logits[0], allowed)).tolist() == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    rows = torch.tensor([[True] * 6, [False] * 5 + [True]])
    assert (
        apply_constraint(logits, rows)[1].argmax() == 5
        and not torch.isinf(apply_constraint(logits, rows)[0]).any()
    )


def test_choices_with_special_characters(smol):
    tok = smol.tokenizer
    choices = ['say "hi"', "a.b (c)", "naïve\n", "a.b"]
    for choice in choices:
        c = choice_constraint(choices, tok)
        for i in tok.encode(choice):
            c.advance(i)
        assert tok.eos_id in ids_of(c.allowed())
    c = choice_constraint(choices, tok)
    for i in tok.encode("axb"):
        if not c.allowed()[i]:
            break
        c.advance(i)
    else:
        raise AssertionError("'.' must be a literal dot, not any character")
