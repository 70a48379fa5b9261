"""Byte-level BPE against Hugging Face: GPT-2's tokenizer.json and SmolLM2's tokenizer from its GGUF."""

from __future__ import annotations

import json
import os

import pytest

from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.formats import bytes_to_token, load_gguf_bpe, load_hf_json
from lmforge.tokenizer.gguf_metadata import read_gguf_metadata
from tests.tokenizer.texts import HARD_CASES, corpus_texts, paragraphs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a dev oracle: pip install -e '.[dev]'")


def sample_texts(data, per_file: int = 150) -> list[str]:
    texts = []
    for text in corpus_texts(data).values():
        texts.extend(paragraphs(text, per_file))
    return texts + [t for t in HARD_CASES if "\ud800" not in t]


@pytest.fixture(scope="module")
def texts(data):
    return sample_texts(data)


def test_gpt2_tokenizer_json_identical(data, texts):
    path = data / "tokenizers/gpt2_hf/tokenizer.json"
    ours, ref = load_hf_json(path), tokenizers.Tokenizer.from_file(str(path))
    assert len(texts) > 2000
    for text in texts:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, repr(text[:80])
    ids = ours.encode("Hello<|endoftext|> world")
    assert ids == ref.encode("Hello<|endoftext|> world").ids
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_gguf_bpe(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf):
    """SmolLM2's real Hugging Face tokenizer, built from the GGUF's vocab and merges.

    Its tokenizer.json pre-tokenizes with Sequence[Digits(individual_digits), ByteLevel] (llama.cpp's
    "smollm"). transformers' own GGUF converter drops the Digits step, which changes e.g. "  1", so we
    build the reference with the tokenizers library as the model's tokenizer.json describes it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    meta = read_gguf_metadata(smollm2_gguf)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
    return tok


def test_smollm2_gguf_identical(smollm2, smollm2_reference, texts):
    extra = ["  1  22 333", "<|im_start|>user\nHi 42!<|im_end|>\n", "x\x04y\x06z", "<|endoftext|><repo_name>"]
    for text in texts + extra:
        want = smollm2_reference.encode(text, add_special_tokens=False).ids
        assert smollm2.encode(text) == want, repr(text[:80])
        assert smollm2.decode(want) == smollm2_reference.decode(want, skip_special_tokens=False)


def test_smollm2_metadata(smollm2):
    assert smollm2.vocab_size == 49152
    assert smollm2.bos_token == "<|im_start|>" and smollm2.eos_token == "<|im_end|>"
    assert smollm2.special_tokens["<|im_start|>"] == 1 and smollm2.special_tokens["<|im_end|>"] == 2
    assert smollm2.missing_bytes, "SmolLM2 lacks a few control bytes; they are dropped like HF does"


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name 3 primes."},
    ],
    [{"role": "user", "content": "émoji 🤗 and\nnewlines\n\n"}, {"role": "assistant", "content": ""}],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_smollm2_chat_template_matches_transformers(smollm2, hf_smollm2, conv, gen):
    want = hf_smollm2.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
    got = smollm2.apply_chat_template(conv, add_generation_prompt=gen)
    assert got == want
    assert smollm2.encode(got) == hf_smollm2(want, add_special_tokens=False).input_ids


def test_transformers_gguf_conversion_agrees_on_corpus(smollm2, hf_smollm2, data):
    """On ordinary prose (no space run before a digit) transformers' converted tokenizer agrees too."""
    text = (data / "text/tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    assert smollm2.encode(text) == hf_smollm2(text, add_special_tokens=False).input_ids


def test_save_load_round_trips(tmp_path, smollm2, smollm2_reference, data):
    text = (data / "text/wiki_demo.txt").read_text(encoding="utf-8")[:100_000] + "  1 <|im_end|>"
    want = smollm2.encode(text)
    smollm2.save(tmp_path / "ours.json")
    again = load_tokenizer(tmp_path / "ours.json")
    assert again.encode(text) == want and again.chat_template == smollm2.chat_template
    # The Hugging Face export is read by the tokenizers library itself and by our loader.
    smollm2.save(tmp_path / "tokenizer.json", format="hf")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text, add_special_tokens=False).ids == want
    assert load_tokenizer(tmp_path / "tokenizer.json").encode(text) == want
    saved = json.loads((tmp_path / "ours.json").read_text(encoding="utf-8"))
    assert saved["merges"][0] == f"{bytes_to_token(b' ')} t"
