"""Batched generation of prompts of different lengths equals generating each alone; stop strings; n."""

from __future__ import annotations

import os

import pytest
import torch

import lmforge
from lmforge.infer.generate import StopText, batch_generate_ids, generate_ids
from lmforge.infer.sampling import SamplingParams
from tests.model.test_families import roundtrip, tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3", "gpt2"])
def test_batched_greedy_equals_one_by_one(kind, tmp_path):
    """Prompts of 3, 11 and 7 tokens (Mistral's window is 5, Gemma's 6: windows slide over the padding)."""
    torch.manual_seed(0)
    model = roundtrip(tiny(kind), tmp_path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 211, (n,), generator=g).tolist() for n in (3, 11, 7)]
    got = batch_generate_ids(model, prompts, 12)
    for p, row in zip(prompts, got):
        assert row == generate_ids(model, torch.tensor([p]), 12).tolist()


def test_batched_rows_end_on_their_own(tmp_path):
    model = roundtrip(tiny("llama"), tmp_path)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    alone = [generate_ids(model, torch.tensor([p]), 10).tolist() for p in prompts]
    eos = {alone[0][3]}  # the first row's 4th token ends it; the other row runs on
    got = batch_generate_ids(model, prompts, 10, eos_ids=eos)
    for row, want in zip(got, alone):
        cut = next((i for i, t in enumerate(want) if t in eos), len(want))
        assert row == want[:cut]
    assert len(got[0]) <= 3 and len(got[1]) > len(got[0])  # row 0 stopped early, row 1 ran on


def test_batched_penalties_use_each_rows_own_history(tmp_path):
    model = roundtrip(tiny("llama"), tmp_path)
    params = SamplingParams(temperature=0, repetition_penalty=1.8, frequency_penalty=0.5)
    prompts = [[5, 6, 7, 5, 6], [100, 101]]
    got = batch_generate_ids(model, prompts, 8, params)
    assert got == [generate_ids(model, torch.tensor([p]), 8, params).tolist() for p in prompts]


def test_empty_prompt_is_a_clear_error(tmp_path):
    model = roundtrip(tiny("llama"), tmp_path)
    with pytest.raises(ValueError, match="every prompt needs a token"):
        batch_generate_ids(model, [[1, 2], []], 4)


def test_stop_text_holds_back_a_possible_stop():
    cut = StopText(["\nUser:", "###"])
    shown = [cut.push(p) for p in ["Hello", " there\n", "Us", "er: more"]]
    assert shown == ["Hello", " there", "", ""] and cut.stopped
    cut = StopText(["###"])
    assert cut.push("a#") == "a" and cut.push("b") == "#b" and cut.flush() == ""
    cut = StopText(["###"])
    assert cut.push("x##") == "x" and cut.flush() == "##"  # ended without the stop: the tail is shown


@pytest.fixture(scope="module")
def smol():
    return lmforge.load_model("smollm2-135m-instruct")


def test_smollm2_batched_equals_one_by_one(smol):
    tok = smol.tokenizer
    prompts = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in ["What is the capital of France?", "Name three colors.", "Hi"]
    ] + [tok.encode("The Roman Empire was")]
    got = batch_generate_ids(smol, prompts, 20)
    assert got == [generate_ids(smol, torch.tensor([p]), 20).tolist() for p in prompts]


def test_stop_strings_and_n_samples(smol):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = lmforge.generate(smol, messages, max_tokens=30)
    word = full.split()[2]
    cut = lmforge.generate(smol, messages, max_tokens=30, stop=[word])
    assert cut == full[: full.index(word)]
    assert "".join(lmforge.stream(smol, messages, max_tokens=30, stop=[word])) == cut
    samples = lmforge.generate(smol, "Once upon a time", max_tokens=12, n=3, temperature=1.0, seed=5)
    assert isinstance(samples, list) and len(samples) == 3 and len(set(samples)) > 1
    again = lmforge.generate(smol, "Once upon a time", max_tokens=12, n=3, temperature=1.0, seed=5)
    assert again == samples  # same seed, same samples
    with pytest.raises(ValueError, match="n must be"):
        lmforge.generate(smol, "Hi", n=0)


def test_prompt_longer_than_the_context_is_a_clear_error(smol):
    with pytest.raises(ValueError, match="context window"):
        lmforge.generate(smol, "hello " * (smol.config.max_seq_len + 10), max_tokens=2)
