"""Read the key/value metadata of a GGUF file (the tokenizer lives there: `tokenizer.ggml.*`).

GGUF (llama.cpp's format) starts with a small header — magic "GGUF", version, tensor count, key/value
count — then typed key/value pairs, then tensor descriptions, then the tensor data. A tokenizer needs
only the key/value part: `tokenizer.ggml.model` ("gpt2" for byte-level BPE, "llama" for SentencePiece),
`tokens`, `merges` or `scores`, `token_type`, the special ids, the pre-tokenizer name
`tokenizer.ggml.pre` and `tokenizer.chat_template`.

We parse that part directly and stop before the tensors: `gguf.GGUFReader` (llama.cpp's reader, which
the model loader uses for the weights) indexes the whole file and every array element, which takes
seconds for a 262k-token vocabulary; this takes a fraction of one. Value type codes come from the
`gguf` package so the two can never disagree.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGUFValueType as T

GGUF_MAGIC = b"GGUF"
_SCALARS = {
    T.UINT8: "<B",
    T.INT8: "<b",
    T.UINT16: "<H",
    T.INT16: "<h",
    T.UINT32: "<I",
    T.INT32: "<i",
    T.FLOAT32: "<f",
    T.BOOL: "<?",
    T.UINT64: "<Q",
    T.INT64: "<q",
    T.FLOAT64: "<d",
}
_NUMPY = {T.UINT8: "<u1", T.INT8: "<i1", T.UINT16: "<u2", T.INT16: "<i2", T.UINT32: "<u4", T.INT32: "<i4",
          T.FLOAT32: "<f4", T.BOOL: "?", T.UINT64: "<u8", T.INT64: "<i8", T.FLOAT64: "<f8"}  # fmt: skip


class _Cursor:
    """Sequential little-endian reads over a buffer, with errors that say what was being read."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"{self.path} is truncated or corrupt: {what} runs past the end of the file")
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        return bytes(self.take(n, what)).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype == T.STRING:
            return self.string(key)
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], key)
        if vtype == T.ARRAY:
            etype = self.scalar("<I", key)
            count = self.scalar("<Q", key)
            if etype in _NUMPY:  # numeric arrays in one step
                dtype = np.dtype(_NUMPY[etype])
                return np.frombuffer(self.take(count * dtype.itemsize, key), dtype=dtype).tolist()
            return [self.value(etype, key) for _ in range(count)]
        raise ValueError(f"{self.path}: metadata field '{key}' has unknown value type {vtype}")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: name, shape in row-major (PyTorch) order, GGML type, byte range."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    offset: int  # from the start of the file
    nbytes: int


def _parse(path: Path, with_tensors: bool) -> tuple[dict[str, Any], list[TensorInfo]]:
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise ValueError(f"{path} is not a readable GGUF file: it is empty") from None
    with buf:
        cur = _Cursor(buf, path)
        if bytes(cur.take(4, "magic")) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
        version = cur.scalar("<I", "version")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = cur.scalar("<Q", "tensor count")
        n_kv = cur.scalar("<Q", "key/value count")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string("a metadata key")
            meta[key] = cur.value(cur.scalar("<I", key), key)
        if not with_tensors:
            return meta, []
        # Tensor infos: name, dims (innermost first), type, offset into the aligned data section.
        raw = []
        for _ in range(n_tensors):
            name = cur.string("a tensor name")
            n_dims = cur.scalar("<I", name)
            dims = [cur.scalar("<Q", name) for _ in range(n_dims)]
            raw.append((name, tuple(reversed(dims)), cur.scalar("<I", name), cur.scalar("<Q", name)))
        align = int(meta.get("general.alignment", 32))
        start = -(-cur.pos // align) * align
        infos = []
        for name, shape, qtype, offset in raw:
            if qtype not in GGML_QUANT_SIZES:
                raise ValueError(f"{path}: tensor {name!r} has unknown type {qtype}")
            block, size = GGML_QUANT_SIZES[qtype]
            nbytes = math.prod(shape) // block * size
            if start + offset + nbytes > len(buf):
                raise ValueError(
                    f"{path} is truncated or corrupt: tensor {name!r} runs past the end of the file"
                )
            infos.append(TensorInfo(name, shape, qtype, start + offset, nbytes))
        return meta, infos


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> dict[str, Any]:
    return _parse(Path(path), with_tensors=False)[0]


def read_gguf_tensor_infos(path: str | os.PathLike) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Metadata and the location of every tensor; the tensor bytes themselves are not read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return _parse(path, with_tensors=True)


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return {key: value} for every metadata field of a GGUF file (arrays become lists)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return dict(_read(str(path.resolve()), path.stat().st_mtime))


def require(meta: dict[str, Any], key: str, path: str | os.PathLike) -> Any:
    """A metadata field that must be there, with an error that names the file and the field."""
    if key not in meta:
        raise ValueError(f"{path}: GGUF metadata has no '{key}' field")
    return meta[key]
