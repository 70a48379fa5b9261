"""lmforge: the whole life of a large language model as one readable, fast, tested Python system."""

from __future__ import annotations

__version__ = "0.1.0"


def load_model(name_or_path, dtype=None, device=None, quantize=None):
    """See lmforge.model.load_model (imported lazily: torch loads only when a model is asked for)."""
    from lmforge.model import load_model as _load

    return _load(name_or_path, dtype=dtype, device=device, quantize=quantize)


def load_tokenizer(name_or_path):
    """See lmforge.tokenizer.load_tokenizer."""
    from lmforge.tokenizer import load_tokenizer as _load

    return _load(name_or_path)


def generate(
    model_or_name, prompt_or_messages, max_tokens: int = 256, ignore_eos: bool = False, **sampling
) -> str:
    """See lmforge.infer.generate.generate: text (or chat messages) in, text out."""
    from lmforge.infer.generate import generate as _generate

    return _generate(model_or_name, prompt_or_messages, max_tokens, ignore_eos, **sampling)


def stream(model_or_name, prompt_or_messages, max_tokens: int = 256, ignore_eos: bool = False, **sampling):
    """See lmforge.infer.generate.stream: an iterator of text deltas."""
    from lmforge.infer.generate import stream as _stream

    return _stream(model_or_name, prompt_or_messages, max_tokens, ignore_eos, **sampling)
