"""Writing models out: Hugging Face folders (to take a model to other tools) and our own checkpoints.

- `save_hf(model, folder)`: config.json + model.safetensors in the family's Hugging Face names, so
  `transformers.AutoModelForCausalLM.from_pretrained(folder)` loads it (tests check the logits match).
- `save_checkpoint(model, path)` / `load_checkpoint(path)`: one safetensors file with our own names and
  the ModelConfig as JSON in its header; nothing to unpickle.
Both write to a temporary file and rename it into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.fileio import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.model.families import hf_name_table
from lmforge.model.transformer import Transformer

_HF_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json a Hugging Face model of this family would have."""
    if cfg.family not in _HF_ARCH:
        raise ValueError(f"no Hugging Face form for family {cfg.family!r}; supported: {', '.join(_HF_ARCH)}")
    if cfg.family == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": [_HF_ARCH["gpt2"]],
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.dim,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.ffn_dim,
            "n_positions": cfg.max_seq_len,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
        }
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    out: dict[str, Any] = {
        "model_type": cfg.family,
        "architectures": [_HF_ARCH[cfg.family]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,  # transformers 4 reads these two ...
        "rope_scaling": cfg.rope_scaling,
        "rope_parameters": rope,  # ... and 5 this one
    }
    if cfg.family == "llama":
        out.update(attention_bias=cfg.attn_bias, mlp_bias=cfg.mlp_bias)
    if cfg.family in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window
    if cfg.family in ("qwen2", "qwen2_moe"):
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window)
    if cfg.family == "qwen2_moe":
        out.update(
            num_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_tok,
            norm_topk_prob=cfg.moe_renormalize,
            moe_intermediate_size=cfg.moe_ffn_dim or cfg.ffn_dim,
            shared_expert_intermediate_size=cfg.shared_expert_dim,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    if cfg.family == "mixtral":
        out.update(
            num_local_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_tok,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
        )
    if cfg.family in ("gemma2", "gemma3_text"):
        out.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=_whole((cfg.attn_scale or cfg.head_dim**-0.5) ** -2),
            sliding_window=cfg.sliding_window,
            layer_types=[f"{t}_attention" for t in cfg.layer_types or ["full"] * cfg.n_layers],
            attn_logit_softcapping=cfg.attn_softcap,
            final_logit_softcapping=cfg.final_softcap,
        )
        if cfg.family == "gemma3_text":
            local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta}
            out.update(
                rope_parameters={"full_attention": rope, "sliding_attention": local},
                rope_local_base_freq=cfg.rope_local_theta,
            )
        del out["hidden_act"]
    return out


def _whole(x: float) -> float | int:
    """An integer when x is one up to rounding (config fields such as query_pre_attn_scalar are ints)."""
    return round(x) if abs(x - round(x)) < 1e-6 else x


def _inverse(table: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """Turn (hf regex → our name template) pairs around: (our-name regex → hf name template).

    Each capturing group of the Hugging Face pattern (a layer number, "q", "weight") becomes a named
    group in the regex over our names; an optional prefix such as "(?:transformer\\.)?" is written out.
    """
    out = []
    for hf_pattern, ours_template in table:
        groups = re.findall(r"\((?!\?)([^()]*)\)", hf_pattern)
        ours = re.escape(ours_template)
        for k, g in enumerate(groups, 1):
            ours = ours.replace(re.escape(f"\\{k}"), f"(?P<g{k}>{g})")
        hf = re.sub(r"\(\?:([^()]*)\)\?", r"\1", hf_pattern)  # "(?:transformer\.)?" → "transformer\."
        k = 0

        def named(_m: re.Match) -> str:
            nonlocal k
            k += 1
            return f"\\g<g{k}>"

        hf = re.sub(r"\((?!\?)[^()]*\)", named, hf).replace("\\.", ".")
        out.append((re.compile(ours + r"\Z"), hf))
    return out


def state_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """Our state dict in the family's Hugging Face tensor names and layouts."""
    cfg = model.config
    table = _inverse(hf_name_table(cfg.family))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if cfg.family == "gpt2":
        # back to Conv1D (in, out) layouts, and one fused query/key/value projection
        for i in range(cfg.n_layers):
            for kind in ("weight", "bias"):
                parts = [state.pop(f"layers.{i}.attn.{x}_proj.{kind}") for x in "qkv"]
                state[f"layers.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        for name, t in list(state.items()):
            if name.startswith("layers.") and name.endswith(".weight") and t.ndim == 2:
                state[name] = t.T
    out = {}
    for name, t in state.items():
        for pat, template in table:
            m = pat.match(name)
            if m:
                out[m.expand(template)] = t.contiguous()
                break
        else:
            raise ValueError(f"parameter {name!r} has no Hugging Face name in a {cfg.family} model")
    return out


def _atomic_save_file(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_hf(model: Transformer, folder: str | os.PathLike) -> Path:
    """Write a Hugging Face model folder (config.json + model.safetensors, + tokenizer.json if we can)."""
    folder = Path(folder)
    tensors = state_to_hf(model)
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    _atomic_save_file(tensors, folder / "model.safetensors", {"format": "pt"})
    atomic_write_text(folder / "config.json", json.dumps(config_to_hf(model.config), indent=2))
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "save") and getattr(tok, "merge_mode", None) == "merges":
        tok.save(folder / "tokenizer.json", format="hf")
        # tokenizer.json has no chat template or BOS/EOS: transformers (and our loader) read them from
        # tokenizer_config.json, and a fine-tuned chat model without its template is not a chat model.
        extra = {k: getattr(tok, k, None) for k in ("chat_template", "bos_token", "eos_token")}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **{k: v for k, v in extra.items() if v}}
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    return folder


def save_checkpoint(model: Transformer, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Our own format: one safetensors file, our tensor names, the ModelConfig (and extra) as JSON."""
    path = Path(path)
    meta = {"lmforge_config": json.dumps(model.config.to_dict()), "lmforge_extra": json.dumps(extra or {})}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _atomic_save_file(state, path, meta)
    return path


def load_checkpoint(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Transformer:
    from safetensors import SafetensorError, safe_open

    from lmforge.model.weights import _fill, empty_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    if "lmforge_config" not in meta:
        raise ValueError(f"{path}: not an lmforge checkpoint (no lmforge_config in its header)")
    cfg = ModelConfig(**json.loads(meta["lmforge_config"]))
    with empty_model():  # no memory or random init for weights _fill replaces at once
        model = Transformer(cfg)
    model = _fill(model, tensors, str(path), dtype or next(iter(tensors.values())).dtype)
    return model.eval()


# ---------------------------------------------------------------------- GGUF
GGUF_ARCH = {"llama": "llama", "gemma3_text": "gemma3"}  # our family → GGUF general.architecture


def _gguf_metadata(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """The model keys of a GGUF file for cfg (``{arch}.context_length``, ...), as plain values."""
    head_dim = cfg.head_dim or cfg.dim // cfg.n_heads
    meta: dict[str, Any] = {"general.architecture": arch, "context_length": cfg.max_seq_len,
                            "embedding_length": cfg.dim, "block_count": cfg.n_layers,
                            "feed_forward_length": cfg.ffn_dim, "attention.head_count": cfg.n_heads,
                            "attention.head_count_kv": cfg.n_kv_heads, "rope.freq_base": cfg.rope_theta,
                            "attention.layer_norm_rms_epsilon": cfg.norm_eps, "vocab_size": cfg.vocab_size}  # fmt: skip
    if arch == "llama":
        meta["rope.dimension_count"] = head_dim
    else:
        meta |= {"attention.key_length": head_dim, "attention.value_length": head_dim,
                 "attention.sliding_window": cfg.sliding_window}  # fmt: skip
    return {k if k.startswith("general.") else f"{arch}.{k}": v for k, v in meta.items()}


def _check_gguf_expressible(cfg: ModelConfig, meta: dict[str, Any]) -> None:
    """A GGUF file stores a few numbers; llama.cpp fixes the rest per architecture (Gemma 3's 5:1 local
    layers, its local RoPE base, (1 + w) norms). Read the metadata back as our loader will and refuse a
    model that would come back as another one."""
    import dataclasses

    from lmforge.model.families import config_from_gguf

    back = config_from_gguf({**meta, "tokenizer.ggml.tokens": None}, "the GGUF being written")
    back.tie_embeddings = cfg.tie_embeddings  # the loader decides this from the tensors (output.weight)
    for key, same in (
        ("head_dim", cfg.head_dim or cfg.dim // cfg.n_heads),
        ("n_kv_heads", cfg.n_kv_heads or cfg.n_heads),
    ):
        if getattr(back, key) == same:  # None means the default; the file spells it out
            setattr(back, key, getattr(cfg, key))
    diff = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(back, f.name)]
    if diff:
        shown = ", ".join(
            f"{k}={getattr(cfg, k)!r} (a GGUF reads back {getattr(back, k)!r})" for k in diff[:3]
        )
        raise ValueError(f"this {cfg.family} model cannot be stored as a GGUF {meta['general.architecture']} "
                         f"file without changing it: {shown}; export it with save_hf instead")  # fmt: skip


def _add_tokenizer(w, tok, vocab_size: int) -> None:
    """The tokenizer into the GGUF metadata: byte-level BPE as "gpt2" (tokens, types, merges), or a
    SentencePiece model as "llama" (pieces, scores, types), with its special ids and chat template."""
    from lmforge.tokenizer.formats import bytes_to_token
    from lmforge.tokenizer.patterns import GGUF_PRE_PATTERNS
    from lmforge.tokenizer.sentencepiece import SentencePieceTokenizer

    if isinstance(tok, SentencePieceTokenizer):
        if len(tok.pieces) != vocab_size:
            raise ValueError(f"the tokenizer has {len(tok.pieces)} pieces, the model {vocab_size} tokens")
        if any(x is None for x in tok.scores):
            raise ValueError("the tokenizer has pieces without a score (from a tokenizer.json); GGUF needs "
                             "a score for every piece")  # fmt: skip
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tok.pieces)
        w.add_token_scores([float(x) for x in tok.scores])
        w.add_token_types([int(t) for t in tok.types])
        for key in ("bos", "eos", "unk", "pad"):
            i = getattr(tok, f"{key}_id", None)
            if i is not None:
                getattr(w, f"add_{key}_token_id")(i)
        w.add_add_eos_token(bool(tok.add_eos))
        w.add_add_space_prefix(bool(tok.add_dummy_prefix))
    elif getattr(tok, "merge_mode", None) == "merges":
        pre = next((k for k, v in GGUF_PRE_PATTERNS.items() if v == tok.pattern), None)
        if pre is None:
            raise ValueError(
                "the tokenizer's pre-tokenizer pattern has no llama.cpp name (tokenizer.ggml.pre)"
            )
        if len(tok.vocab) != vocab_size:
            raise ValueError(f"the tokenizer has {len(tok.vocab)} tokens, the model {vocab_size}")
        specials = {i: s for s, i in tok.special_tokens.items()}
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list([specials.get(i) or bytes_to_token(tok.vocab[i]) for i in range(vocab_size)])
        w.add_token_types([3 if i in specials else 1 for i in range(vocab_size)])  # 3: control
        w.add_token_merges([f"{bytes_to_token(a)} {bytes_to_token(b)}" for a, b in tok.merges])
        for key, token in (("bos", tok.bos_token), ("eos", tok.eos_token)):
            if token is not None and tok.token_to_id(token) is not None:
                getattr(w, f"add_{key}_token_id")(tok.token_to_id(token))
    else:
        raise ValueError(
            "GGUF export needs the model's byte-level BPE or SentencePiece tokenizer (pass tokenizer=)"
        )
    w.add_add_bos_token(bool(getattr(tok, "add_bos", False)))
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)


def save_gguf(model: Transformer, path: str | os.PathLike, tokenizer=None, dtype: str = "f16") -> Path:
    """Write a llama-family or Gemma 3 model (e.g. SmolLM2 or Gemma 3 270M after `lmforge merge`) as a GGUF
    file llama.cpp can run.

    Matrices are stored in f16 (or f32), norms in f32, as llama.cpp's converter does. The layout changes
    load_gguf undoes are redone (weights.redo_gguf_layout): Llama's q/k rows get llama.cpp's RoPE
    permutation back, Gemma's norms are stored as 1 + w. The tokenizer (byte-level BPE with its merges, or
    SentencePiece pieces with their scores; special ids; chat template) goes into the metadata, so the
    file is self-contained. A model the format cannot express (say, a Gemma 3 with another local/global
    layer pattern) is an error, not a file that loads as another model. Quantized types (Q4_K, ...) are
    llama.cpp's `llama-quantize` job on this file. Written atomically."""
    import numpy as np
    from gguf import GGUFWriter

    from lmforge.model.families import _GGUF_NAMES
    from lmforge.model.weights import redo_gguf_layout

    cfg = model.config
    if cfg.family not in GGUF_ARCH:
        raise ValueError(f"GGUF export supports the families {', '.join(GGUF_ARCH)}; this model is "
                         f"{cfg.family!r}: export it with save_hf and convert with llama.cpp")  # fmt: skip
    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}")
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("GGUF export needs the model's tokenizer (pass tokenizer=)")
    arch = GGUF_ARCH[cfg.family]
    meta = _gguf_metadata(cfg, arch)
    _check_gguf_expressible(cfg, meta)
    names = _inverse(_GGUF_NAMES)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w = GGUFWriter(str(tmp), arch)
    try:
        w.add_name(getattr(tok, "name", None) or path.stem)
        for key, value in meta.items():
            if key != "general.architecture" and value is not None:
                add = w.add_float32 if isinstance(value, float) else w.add_uint32
                add(key, value)
        w.add_file_type(1 if dtype == "f16" else 0)  # MOSTLY_F16 / ALL_F32
        _add_tokenizer(w, tok, cfg.vocab_size)
        for name, t in model.state_dict().items():
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            gname = next((m.expand(tpl) for pat, tpl in names if (m := pat.match(name))), None)
            if gname is None:
                if "rotary" in name or "inv_freq" in name:
                    continue
                raise ValueError(f"no GGUF name for tensor {name!r}")
            a = redo_gguf_layout(t.detach().float().cpu().numpy(), name, cfg)
            w.add_tensor(
                gname, np.ascontiguousarray(a.astype(np.float16) if dtype == "f16" and a.ndim == 2 else a)
            )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            w.close()
        tmp.unlink(missing_ok=True)  # never a half-written file under the real name
        raise
    return path
