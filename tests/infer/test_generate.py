"""lmforge.generate / stream: chat messages in, text out; streaming never splits a character."""

from __future__ import annotations

import pytest

import lmforge
from lmforge.infer.generate import text_deltas
from lmforge.tokenizer.formats import load_gpt2


def test_text_deltas_never_split_a_character(data):
    tok = load_gpt2(data / "tokenizers/gpt2_openai/encoder.json", data / "tokenizers/gpt2_openai/vocab.bpe")
    text = "naïve 🤗 emoji 中文 done"
    ids = tok.encode(text)
    partial = [
        i
        for i in ids
        if tok.vocab[i].decode("utf-8", errors="replace") != tok.vocab[i].decode("utf-8", "ignore")
    ]
    assert partial, "the test needs tokens that hold only part of a character"
    deltas = list(text_deltas(tok, ids))
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


@pytest.fixture(scope="module")
def smol():
    return lmforge.load_model("smollm2-135m-instruct")


def test_generate_chat_and_stream_agree(smol):
    answer = lmforge.generate(
        smol, [{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
    )
    assert "Paris" in answer
    kwargs = dict(max_tokens=20, temperature=0.8, top_p=0.9, seed=11)
    streamed = list(lmforge.stream(smol, "Once upon a time", **kwargs))
    assert len(streamed) > 1 and "".join(streamed) == lmforge.generate(smol, "Once upon a time", **kwargs)
    assert lmforge.generate(smol, "Once upon a time", **{**kwargs, "seed": 12}) != "".join(streamed)


def test_ignore_eos_runs_to_max_tokens(smol):
    import torch

    from lmforge.infer.generate import generate_ids

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    short = lmforge.generate(smol, messages, max_tokens=40)
    longer = lmforge.generate(smol, messages, max_tokens=40, ignore_eos=True)
    assert longer.startswith(short) and len(longer) > len(short)  # the model stops early unless told not to
    ids = torch.tensor([smol.tokenizer.encode("Hi")])
    assert len(generate_ids(smol, ids, 12)) == 12  # no end tokens given: exactly the limit


def test_plain_prompts_get_the_special_tokens_the_model_asks_for(smol, gemma_gguf):
    """Gemma 3 needs its <bos> (without it greedy text degenerates into "are are are ..."); SmolLM2's file
    asks for none; a conversation gets what its chat template writes."""
    from lmforge.infer.generate import prompt_ids
    from lmforge.tokenizer import load_tokenizer

    gemma = load_tokenizer(gemma_gguf)
    assert prompt_ids(gemma, "The Nile")[0] == gemma.bos_id
    assert prompt_ids(gemma, "The Nile")[1:] == gemma.encode("The Nile")
    assert prompt_ids(smol.tokenizer, "The Nile") == smol.tokenizer.encode("The Nile")
    messages = [{"role": "user", "content": "Hi"}]
    assert prompt_ids(smol.tokenizer, messages) == smol.tokenizer.encode(
        smol.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    )
