"""The transformer: config, layers, attention, positions, families and their weights."""

from __future__ import annotations

import os

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "load_model"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """A model by name (a packaged real model), a .gguf file, or a Hugging Face folder or hub id.

    Returns the model in eval mode — a Transformer (decoders), a BertEncoder (with `encode(texts)`) or an
    EncoderDecoder (T5) — with its tokenizer as `model.tokenizer` when the files have one.
    """
    from lmforge.model.weights import load_weights
    from lmforge.registry import resolve
    from lmforge.tokenizer import load_tokenizer

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    path = resolve(name_or_path)
    model = load_weights(path, dtype or torch.float32)
    if getattr(model, "tokenizer", None) is None and (
        path.suffix == ".gguf" or (path / "tokenizer.json").is_file()
    ):
        model.tokenizer = load_tokenizer(path)
    return model.to(device) if device is not None else model
