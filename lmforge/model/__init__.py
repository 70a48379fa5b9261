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
    quantize: str | None = None,
) -> torch.nn.Module:
    """A model by name (a packaged real model), a .gguf file, or a Hugging Face folder or hub id.

    Returns the model in eval mode — a Transformer (decoders), a BertEncoder (with `encode(texts)`) or an
    EncoderDecoder (T5) — with its tokenizer as `model.tokenizer` when the files have one.

    quantize: "int8" or "int4" replaces the linear layers by weight-only quantized ones
    (lmforge.model.quantize) that compute in bfloat16 unless `dtype` says otherwise; CPU only. A GGUF
    file is quantized tensor by tensor as it loads, keeping its own 4-bit codes where it has them.
    """
    from lmforge.model.weights import load_weights
    from lmforge.registry import resolve
    from lmforge.tokenizer import load_tokenizer

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    if quantize is not None:
        from lmforge.model.quantize import check_mode

        check_mode(quantize)
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"quantize={quantize!r} runs on the CPU only, not on {device}")
    path = resolve(name_or_path)
    if quantize is not None and path.suffix == ".gguf":
        from lmforge.model.quantize import load_gguf_quantized

        model = load_gguf_quantized(path, quantize, dtype=dtype or torch.bfloat16)
    else:
        model = load_weights(path, torch.float32 if quantize else dtype or torch.float32)
        if quantize is not None:
            from lmforge.model.quantize import quantize_model

            quantize_model(model, quantize, dtype=dtype or torch.bfloat16)
    if getattr(model, "tokenizer", None) is None and (
        path.suffix == ".gguf" or (path / "tokenizer.json").is_file()
    ):
        model.tokenizer = load_tokenizer(path)
    return model.to(device) if device is not None else model
