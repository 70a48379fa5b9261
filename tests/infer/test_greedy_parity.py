"""The correctness bar: with the same dequantized float32 weights, our greedy output equals transformers'
`generate`, token for token: 64 new tokens, 10 prompts, SmolLM2 and Gemma 3 (both loaded from their GGUF
files by each library on its own)."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.infer.generate import generate_ids
from lmforge.model.weights import load_gguf
from lmforge.tokenizer import load_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The history of the Roman Empire",
    "def quicksort(xs):",
    "Once upon a time",
    "The three laws of thermodynamics are",
    "Photosynthesis is the process by which",
    "Paris, London and Berlin are",
    "import numpy as np\n\n# compute the mean of a matrix",
    "Q: What is 17 times 3?\nA:",
    "The recipe for a simple bread needs",
    "In 1969, astronauts",
]
NEW_TOKENS = 64


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_greedy_equals_transformers(name, smollm2_gguf, gemma_gguf):
    path = smollm2_gguf if name == "smollm2" else gemma_gguf
    ours = load_gguf(path)
    tok = load_tokenizer(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    # Never stop at an end token: compare all 64. (min_new_tokens would instead ban the end tokens, which
    # changes the argmax whenever the model wants to stop.)
    hf.generation_config.eos_token_id = None
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=True)])  # Gemma's <bos>, as HF's tokenizer
        with torch.inference_mode():
            want = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )[0, ids.shape[1] :]
        assert len(want) == NEW_TOKENS
        got = generate_ids(ours, ids, NEW_TOKENS)
        assert got.tolist() == want.tolist(), (name, prompt)
