"""Read the key/value metadata of a GGUF file (the tokenizer lives there: `tokenizer.ggml.*`).

GGUF (llama.cpp's format) starts with a header of typed key/value pairs, then tensor descriptions,
then the tensor data. A tokenizer needs only the key/value part: `tokenizer.ggml.model` ("gpt2" for
byte-level BPE, "llama" for SentencePiece, "bert" for WordPiece), `tokens`, `merges` or `scores`,
`token_type`, the special ids, the pre-tokenizer name `tokenizer.ggml.pre` and `tokenizer.chat_template`.
We parse with the `gguf` package (llama.cpp's own Python reader) and cache per file.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> dict[str, Any]:
    import gguf  # plumbing: llama.cpp's reader

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # truncated or corrupt files raise from deep inside the reader
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from e
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception as e:
            raise ValueError(f"{path}: metadata field '{key}' could not be decoded: {e}") from e
    return meta


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return {key: value} for every metadata field of a GGUF file (arrays become lists)."""
    path = Path(path)
    _check_gguf(path)
    return dict(_read(str(path.resolve()), path.stat().st_mtime))


def require(meta: dict[str, Any], key: str, path: str | os.PathLike) -> Any:
    """A metadata field that must be there, with an error that names the file and the field."""
    if key not in meta:
        raise ValueError(f"{path}: GGUF metadata has no '{key}' field")
    return meta[key]
