"""Token shards: a corpus tokenized once into flat arrays of token ids that training reads as memmaps.

Each document is encoded and followed by the tokenizer's end token (preceded by its BOS token when it
has one distinct from the end token), so the model learns where documents stop and every window that
crosses a boundary sees the separator. Documents go to the validation split by a hash of (seed, document
index) — stable however many workers encode them — and each split is one `<split>.bin` file of uint16
ids (uint32 when the vocabulary has more than 65,536 tokens), a `<split>.docs.npy` of document start
offsets, and `meta.json` (dtype, vocabulary size, token counts, the tokenizer's name, and the inputs'
sizes and modification times). A folder whose meta.json matches the inputs and settings is reused as is:
re-running a pipeline does not re-tokenize. Files are written under temporary names and renamed, meta.json
last, so an interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.corpus import corpus_files, iter_documents

SPLITS = ("train", "val")


def _signature(paths: Sequence[str | Path], settings: dict[str, Any]) -> dict[str, Any]:
    files = corpus_files(paths)
    return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files], **settings}


def is_val(index: int, seed: int, val_fraction: float) -> bool:
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


def tokenize_corpus(paths: Sequence[str | Path], tokenizer, out_dir: str | Path, val_fraction: float = 0.05,
                    seed: int = 0, workers: int | None = None, tokenizer_name: str | None = None,
                    text_field: str = "text") -> Path:  # fmt: skip
    """Encode the corpus into out_dir (see the module docstring); returns out_dir."""
    out = Path(out_dir)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.token_to_id("<|endoftext|>")
    if eos is None:
        raise ValueError("the tokenizer has no end token (eos or <|endoftext|>) to separate documents")
    bos = getattr(tokenizer, "bos_id", None)
    bos = bos if bos is not None and bos != eos else None
    vocab = int(tokenizer.vocab_size)
    settings = {"val_fraction": val_fraction, "seed": seed, "tokenizer": tokenizer_name, "vocab_size": vocab,
                "eos": eos, "bos": bos, "text_field": text_field}  # fmt: skip
    signature = _signature(paths, settings)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("signature") == signature:
                return out  # already done for these inputs and settings
        except json.JSONDecodeError:
            pass
        meta_path.unlink()
    docs = list(iter_documents(paths, text_field))
    encoded = tokenizer.encode_batch(docs, num_workers=workers) if hasattr(tokenizer, "encode_batch") else [
        tokenizer.encode(d) for d in docs
    ]  # fmt: skip
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        pieces, starts, n = [], [], 0
        for i, ids in enumerate(encoded):
            if is_val(i, seed, val_fraction) != (split == "val"):
                continue
            row = ([bos] if bos is not None else []) + list(ids) + [eos]
            starts.append(n)
            pieces.append(np.asarray(row, dtype=dtype))
            n += len(row)
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
        _atomic_write(out / f"{split}.bin", tokens.tobytes())
        tmp = out / f"{split}.docs.tmp.npy"
        np.save(tmp, np.asarray(starts, dtype=np.int64))
        os.replace(tmp, out / f"{split}.docs.npy")
        counts[split] = {"tokens": int(n), "documents": len(starts)}
    if counts["train"]["tokens"] == 0:
        raise ValueError("the corpus gave no training tokens (every document went to validation?)")
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": vocab, "tokenizer": tokenizer_name, "splits": counts,
            "signature": signature}  # fmt: skip
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TokenShards:
    """One split of a tokenized corpus: `.tokens` (a read-only memmap), `.doc_starts`, `.meta`."""

    def __init__(self, out_dir: str | Path, split: str = "train"):
        d = Path(out_dir)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not (d / "meta.json").is_file():
            raise ValueError(f"{d}: no meta.json — not a finished token-shard folder (see tokenize_corpus)")
        self.meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        self.split = split
        n = self.meta["splits"][split]["tokens"]
        self.tokens = np.memmap(d / f"{split}.bin", dtype=self.meta["dtype"], mode="r", shape=(n,)) if n else (
            np.zeros(0, dtype=self.meta["dtype"]))  # fmt: skip
        self.doc_starts = np.load(d / f"{split}.docs.npy")

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])
