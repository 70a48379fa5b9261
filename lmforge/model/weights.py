"""Loading real weights: Hugging Face safetensors folders and GGUF files, into one Transformer.

Safetensors (a header of names, dtypes and offsets, then raw tensors) is read with the safetensors
library; nothing is ever unpickled. GGUF tensors are dequantized to float (quant.py, or the gguf
library's reference until ours covers a type) and renamed. llama.cpp stores Llama's query and key
weights permuted so that its RoPE can rotate neighbouring features; we undo that permutation so the
weights match Hugging Face's rotate-half layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lmforge.fileio import read_json
from lmforge.model.config import ModelConfig
from lmforge.model.families import config_from_gguf, config_from_hf, gguf_name_to_ours, hf_tensors_to_ours
from lmforge.model.transformer import Transformer


def _fill(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str, dtype: torch.dtype
) -> torch.nn.Module:
    """Copy named tensors into any of our models (it needs only `.config` and the state dict), checking
    that every parameter is there with the right shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    if missing:
        raise ValueError(f"{where}: missing tensors for {len(missing)} parameters, e.g. {missing[:3]}")
    for name, t in tensors.items():
        if name not in own:
            raise ValueError(f"{where}: tensor {name!r} has no place in a {model.config.family} model")
        if tuple(t.shape) != tuple(own[name].shape):
            raise ValueError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(own[name].shape)}"
            )
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    return model


def _model_type(path: Path) -> str | None:
    return read_json(path / "config.json").get("model_type") if (path / "config.json").is_file() else None


def hf_config(path: Path) -> dict:
    """A Hugging Face folder's config.json, with errors that name the file."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (a Hugging Face model folder needs one)")
    return read_json(cfg_path)


def hf_tensor_files(path: Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """(file, {name: tensor}) for each safetensors file of a folder (one file, or shards with an index).

    Only safetensors: pickled .bin checkpoints could run code when loaded, so we never read them.
    """
    from safetensors import SafetensorError, safe_open

    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / f for f in read_json(index)["weight_map"].values()})
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights (pickled .bin files are never loaded)")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                tensors = {name: st.get_tensor(name) for name in st.keys()}
        except SafetensorError as e:
            raise ValueError(f"{f} is not a readable safetensors file: {e}") from None
        yield f, tensors


def load_hf_folder(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Transformer:
    """A Hugging Face model folder of a decoder family: config.json + safetensors."""
    path = Path(path)
    cfg = config_from_hf(hf_config(path), str(path / "config.json"))
    tensors: dict[str, torch.Tensor] = {}
    for f, hf in hf_tensor_files(path):
        tensors.update(hf_tensors_to_ours(cfg, hf, str(f)))
    if "lm_head.weight" not in tensors:
        cfg.tie_embeddings = True
    elif cfg.tie_embeddings:
        tensors.pop("lm_head.weight")
    with empty_model():
        model = Transformer(cfg)
    return _fill(model, tensors, str(path), dtype).eval()


@contextmanager
def empty_model() -> Iterator[None]:
    """Build modules without memory or random init: the checkpoint's weights replace them at once.

    Parameters go to the meta device, and torch.nn.init's functions do nothing meanwhile (random init
    of a 262k-word embedding costs seconds, and on meta tensors it drags in torch's compiler stack).
    Buffers that are computed, not loaded (RoPE frequencies), are made on the CPU explicitly.
    """
    names = ["normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "trunc_normal_", "xavier_uniform_"]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: rows (head, pair-half, i) → (head, i, pair-half)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor_name(gguf_name: str, cfg, path) -> str | None:
    """Our name for a GGUF tensor; None for tensors we recompute (RoPE frequencies); an error otherwise."""
    ours = gguf_name_to_ours(gguf_name)
    if ours is None and not gguf_name.startswith("rope_freqs"):
        raise ValueError(f"{path}: unknown tensor {gguf_name!r} for a {cfg.family} model")
    return ours


def qk_heads(ours: str, cfg) -> int | None:
    """llama.cpp permutes the rows of Llama's q and k weights for its RoPE layout: the number of heads to
    un-permute them by (for q/k weights and, row for row, their quantization scales), else None."""
    if cfg.family == "llama" and ours.rpartition(".")[0].endswith("attn.q_proj"):
        return cfg.n_heads
    if cfg.family == "llama" and ours.rpartition(".")[0].endswith("attn.k_proj"):
        return cfg.n_kv_heads
    return None


def undo_gguf_layout(w: np.ndarray, ours: str, cfg) -> np.ndarray:
    """What llama.cpp changed in a float tensor, undone: q/k rows permuted, Gemma's norms stored as 1 + w."""
    heads = qk_heads(ours, cfg)
    if heads:
        return unpermute_qk(w, heads)
    if cfg.norm_offset and ours.endswith("norm.weight"):
        return w - cfg.norm_offset  # we keep w and add the offset back in RMSNorm
    return w


def redo_gguf_layout(w: np.ndarray, ours: str, cfg) -> np.ndarray:
    """The inverse of undo_gguf_layout, for writing a GGUF: q/k rows permuted back, norms as offset + w."""
    heads = qk_heads(ours, cfg)
    if heads:  # rows (head, i, pair-half) → (head, pair-half, i)
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    if cfg.norm_offset and ours.endswith("norm.weight"):
        return w + cfg.norm_offset
    return w


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Transformer:
    """A GGUF model file (llama.cpp): metadata → config, tensors dequantized and renamed.

    The file is memory-mapped: each tensor's bytes are read once, straight into the dequantizer.
    """
    from lmforge.model.quant import dequantize
    from lmforge.tokenizer.gguf_metadata import read_gguf_tensor_infos

    path = Path(path)
    meta, infos = read_gguf_tensor_infos(path)
    cfg = config_from_gguf(meta, str(path))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors: dict[str, torch.Tensor] = {}
    for info in infos:
        ours = gguf_tensor_name(info.name, cfg, path)
        if ours is None:
            continue
        try:
            w = dequantize(data[info.offset : info.offset + info.nbytes], info.qtype, info.shape)
        except ValueError as e:
            raise ValueError(f"{path}: tensor {info.name!r}: {e}") from None
        tensors[ours] = torch.from_numpy(np.ascontiguousarray(undo_gguf_layout(w, ours, cfg)))
    cfg.tie_embeddings = "lm_head.weight" not in tensors
    with empty_model():
        model = Transformer(cfg)
    return _fill(model, tensors, str(path), dtype).eval()


def load_weights(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Any supported checkpoint: a GGUF file, a Hugging Face folder of a decoder, T5 or BERT, or our own
    (a training run's `step_*.pt` or its folder, or an exported `.safetensors` with its config)."""
    path = Path(path)
    if path.suffix == ".pt" or (path.is_dir() and not (path / "config.json").is_file()
                                and any(path.glob("step_*.pt"))):  # fmt: skip
        from lmforge.train.checkpoint import model_from_checkpoint

        return model_from_checkpoint(path, dtype)
    if path.suffix == ".safetensors":
        from lmforge.model.export import load_checkpoint

        return load_checkpoint(path, dtype)
    if path.is_dir():
        model_type = _model_type(path)
        if model_type in ("t5", "mt5"):
            from lmforge.model.encoder_decoder import load_t5_folder

            return load_t5_folder(path, dtype)
        if model_type == "bert":
            from lmforge.model.bert import load_bert_folder

            return load_bert_folder(path, dtype)
        return load_hf_folder(path, dtype)
    if path.suffix == ".gguf":
        return load_gguf(path, dtype)
    raise ValueError(
        f"{path}: expected a .gguf file, a Hugging Face folder (config.json + *.safetensors), "
        "or an lmforge checkpoint (step_*.pt, a run folder, or an exported .safetensors)"
    )


__all__ = ["load_weights", "load_gguf", "load_hf_folder", "ModelConfig"]
