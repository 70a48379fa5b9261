"""Compiled decoding: a whole decode step as one torch.compile graph over a static KV cache.

Why. Decoding one token of SmolLM2-135M runs about a thousand small PyTorch operations (30 blocks of
norms, projections, RoPE, attention, residual adds, the gated MLP). In eager mode each pays Python and
dispatcher overhead of a few microseconds, on a CPU about as much time as the int4 matrix products
themselves. torch.compile (Ansel et al. 2024, "PyTorch 2"; its inductor backend) traces the step once
and emits a few dozen fused C++ loops for the elementwise work — a norm, RoPE with its cache write, the
SiLU gate — with direct calls into the matmul and attention kernels in between. gpt-fast
(pytorch-labs) does the same on GPUs, where the overhead is kernel launches.

What it needs: shapes that do not change from step to step, or each step would be a new graph. So the
cache is a `StaticKVCache`: buffers of a fixed length, the position a tensor, new keys written with an
index_put, attention over the whole buffer with a mask hiding the slots not yet written. Its length is
rounded up to a multiple of `BUCKET`, so prompts of similar length share one compiled graph. The
prompt's prefill runs eagerly on the same cache (its length changes with every prompt; one large
forward has little overhead to save).

The cost is compilation: the first step of a new shape takes 1–2 minutes on two cores (inductor
writes and builds C++); inductor caches the result on disk, so later processes with the same model and
bucket start in seconds. Inductor needs a C++ compiler (gcc or clang) at run time. Outputs equal
eager decoding up to floating-point rounding (fused kernels add in a different order); tests check
token-for-token greedy agreement.
"""

from __future__ import annotations

import torch

from lmforge.infer.kv_cache import StaticKVCache

BUCKET = 256  # static cache lengths are multiples of this: few distinct shapes, few compilations


def static_capacity(needed: int, limit: int | None = None) -> int:
    """The static cache length for `needed` tokens: the next multiple of BUCKET, but not past `limit`
    (the model's context window) unless `needed` itself is."""
    bucket = -(-needed // BUCKET) * BUCKET
    return max(needed, min(bucket, limit)) if limit else bucket


def decode_step(model, token: torch.Tensor, cache) -> torch.Tensor:
    """Logits (B, V) for the next tokens (B, 1) after what the cache holds; the eager step."""
    return model(token, cache=cache)[:, -1]  # (B, V)


_compiled = None


def compiled_decode_step(model, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
    """Logits (B, V) of one decode step, token (B, 1), run as a compiled graph; advances the cache.

    The caller checks that the cache has room (an index past max_len is not caught inside the graph).
    """
    global _compiled
    if _compiled is None:
        # cpp_wrapper: the generated code that calls the kernels is C++ too, not Python (~10% faster
        # here; compiling takes twice as long)
        _compiled = torch.compile(decode_step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    try:
        return _compiled(model, token, cache)
    except Exception as e:  # inductor's errors are long; say what is missing first
        if "compiler" in str(e).lower() or "CppCompileError" in type(e).__name__:
            raise RuntimeError(
                "compiled decoding needs a working C++ compiler (gcc or clang) for torch.compile's CPU "
                f"backend; run without --compile, or install one. The error was: {str(e)[:500]}"
            ) from e
        raise


def new_static_cache(model, batch: int, needed: int) -> StaticKVCache:
    """A StaticKVCache for `needed` tokens per row, sized to its bucket, in the model's dtype."""
    cfg = model.config
    return StaticKVCache(
        cfg, batch, static_capacity(needed, cfg.max_seq_len), model.embed.weight.dtype, model.device
    )
