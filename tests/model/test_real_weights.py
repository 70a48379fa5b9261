"""Real weights: SmolLM2-135M-Instruct from its GGUF matches transformers loading the same file."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.model.weights import load_gguf
from lmforge.tokenizer import load_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea, there lived",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def pair(smollm2_gguf):
    ours = load_gguf(smollm2_gguf)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    return ours, hf, load_tokenizer(smollm2_gguf)


def test_smollm2_logits_match(pair):
    ours, hf, tok = pair
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            diff = (ours(ids) - hf(ids).logits).abs().max().item()
        assert diff <= 1e-3, (prompt, diff)


def test_smollm2_greedy_continuation_matches(pair):
    ours, hf, tok = pair
    ids = torch.tensor([tok.encode(PROMPTS[3])])
    want = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :].tolist()
    got = ids
    with torch.no_grad():
        for _ in range(12):
            nxt = ours(got)[:, -1].argmax(-1, keepdim=True)
            got = torch.cat([got, nxt], dim=1)
            if nxt.item() == tok.eos_id:  # transformers stops at the end-of-turn token too
                break
    assert got[0, ids.shape[1] :].tolist() == want
    assert "4" in tok.decode(want)


def test_load_model_by_name_answers_a_question():
    import lmforge

    model = lmforge.load_model("smollm2-135m-instruct")
    tok = model.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        for _ in range(10):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert "Paris" in tok.decode(ids[0, -10:].tolist())


def test_gemma3_logits_match(gemma_gguf):
    """Gemma 3 270M: sandwich norms, QK-norm, GeGLU, local/global layers with two RoPE bases."""
    ours = load_gguf(gemma_gguf)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(gemma_gguf.parent), gguf_file=gemma_gguf.name, dtype=torch.float32
    ).eval()
    tok = load_tokenizer(gemma_gguf)
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 55)  # > 512 tokens: the window matters
    for prompt in PROMPTS[:3] + [long]:
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=True)])
        with torch.no_grad():  # the last 16 positions: a 262k vocabulary makes full logits large
            diff = (ours(ids, logits_to_keep=16) - hf(ids, logits_to_keep=16).logits).abs().max().item()
        assert diff <= 1e-3, (prompt[:30], ids.shape, diff)
    assert ids.shape[1] > 512
    # the same greedy continuation
    ids = torch.tensor([tok.encode(PROMPTS[0], add_special_tokens=True)])
    want = hf.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :].tolist()
    got = ids
    with torch.no_grad():
        for _ in range(len(want)):
            got = torch.cat([got, ours(got, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert got[0, ids.shape[1] :].tolist() == want
