"""Token shards: a corpus tokenized once into flat files of token ids that training reads as memmaps.

Tokenizing is the slow part of a data pipeline and training reads the same tokens many times, so we do it
once (nanoGPT's `prepare.py`, nanochat's shards): every document is encoded, framed by separator tokens and
appended to the token stream of its split, and the stream is cut into shard files of ~`shard_tokens` ids.

Separators. Each document is followed by the end-of-document token, so the model learns where a text
stops and a window that crosses a boundary sees the break. The end token is `<|endoftext|>` when the
vocabulary has it (GPT-2, tiktoken, SmolLM2, Qwen: their pretraining separator; a chat model's EOS such as
`<|im_end|>` ends a *turn*), else the tokenizer's EOS. The document is also preceded by BOS when the
tokenizer itself prepends one (`add_bos`: Llama, Gemma) and it differs from the end token. `eos_id=` /
`bos_id=` override both (bos_id=None: no BOS). Document text is encoded with special tokens off, so a
literal "<|endoftext|>" inside a web page is text, not a forged separator.

The split. Document i goes to validation when blake2b(f"{seed}:{i}") / 2^64 < val_fraction: a function
of the index and seed only, so the assignment is the same however many workers encode and however the
documents are chunked; meta.json lists the validation documents' indices.

Files, per split: `<split>_00000.bin` raw ids (uint16 when every id fits, i.e. vocab ≤ 65,536 — half the
disk and page cache of uint32 — else uint32), `<split>_00000.idx.npy` the documents' start offsets in
that shard (documents never straddle shards, so packing reads a document from one file), and
`<split>_00000.done`, a marker written last (temporary file + os.replace: it exists only when the shard is
whole). `meta.json`, written at the very end, holds the dtype, vocabulary size, token and document counts,
the shard list, the tokenizer's name and fingerprint, the separators and the split.

Resuming. Everything is keyed by a signature of the inputs (paths, sizes, mtimes) and settings. A folder
whose meta.json has the same signature is returned untouched; after an interruption, the finished shards
(done markers with the same signature) are kept and only the documents after the last finished shard of
each split are encoded again. Whether a document is already covered is known from its index alone (the
split is a hash of it), so skipped documents are read but never tokenized. A lock file (`.lock`) makes a
second process that asks for the same folder (another DDP rank) wait, then reuse the result.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmforge.data.corpus import corpus_files, iter_documents

SPLITS = ("train", "val")
FORMAT = 2  # bump when the file layout changes: an old folder is then rebuilt, never misread
CHUNK_CHARS = 1 << 18  # ~256k characters per task sent to a worker: big enough to hide the IPC cost


# ---------------------------------------------------------------------------------------------- the rules
def is_val(index: int, seed: int, val_fraction: float) -> bool:
    """Whether document `index` belongs to the validation split (a hash: stable across worker counts)."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


def separator_ids(tokenizer, eos_id: int | Literal["auto"] = "auto",
                  bos_id: int | None | Literal["auto"] = "auto") -> tuple[int | None, int]:  # fmt: skip
    """(bos, eos) framing every document: see the module docstring for the rule."""
    if eos_id == "auto":
        eos_id = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>", tokenizer.eos_id)
        if eos_id is None:
            raise ValueError(
                "the tokenizer has no end-of-document token (<|endoftext|> or an EOS): pass eos_id=..."
            )
    if bos_id == "auto":
        bos_id = tokenizer.bos_id if getattr(tokenizer, "add_bos", False) else None
        if bos_id == eos_id:
            bos_id = None
    return bos_id, int(eos_id)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the ids (class, vocabulary, merges, specials, pattern): two tokenizers with
    the same name but different files do not share shards."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    for part in (
        sorted(getattr(tokenizer, "vocab", {}).items()),
        sorted(getattr(tokenizer, "special_tokens", {}).items()),
        getattr(tokenizer, "_merges", None),
        getattr(tokenizer, "pattern", None),
        getattr(tokenizer, "scores", None),
    ):
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _encode_kwargs(tokenizer) -> dict[str, bool]:
    """Special tokens off: we add the separators ourselves, and text must not forge them."""
    import inspect

    params = inspect.signature(tokenizer.encode).parameters
    return {k: False for k in ("allow_special", "add_special_tokens") if k in params}


# ------------------------------------------------------------------------------------------ the workers
_WORKER: tuple[Any, dict] | None = None


def _init_worker(tokenizer) -> None:
    # The tokenizer reaches each worker once (inherited under fork, pickled under spawn), not per task.
    global _WORKER
    _WORKER = (tokenizer, _encode_kwargs(tokenizer))


def _encode_texts(texts: list[str]) -> list[np.ndarray]:
    tok, kwargs = _WORKER
    # int32 arrays travel back through the pipe far faster than lists of Python ints
    return [np.asarray(tok.encode(t, **kwargs), dtype=np.int32) for t in texts]


def _encode_stream(chunks: Iterator[list[tuple[int, str]]], tokenizer, workers: int
                   ) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """(index, ids) for every document of every chunk, in input order, whatever the number of workers."""
    if workers <= 1:
        kwargs = _encode_kwargs(tokenizer)
        for chunk in chunks:
            for i, text in chunk:
                yield i, np.asarray(tokenizer.encode(text, **kwargs), dtype=np.int32)
        return
    with mp.get_context().Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        # At most 4 tasks per worker in flight: memory stays bounded on a corpus larger than RAM
        # (Pool.imap would read the whole input ahead), and results are taken in submission order.
        pending: deque = deque()
        for chunk in chunks:
            pending.append(([i for i, _ in chunk], pool.apply_async(_encode_texts, ([t for _, t in chunk],))))
            if len(pending) >= 4 * workers:
                indices, result = pending.popleft()
                yield from zip(indices, result.get())
        while pending:
            indices, result = pending.popleft()
            yield from zip(indices, result.get())


# --------------------------------------------------------------------------------------------- the files
def _atomic_write(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: a reader (or a resumed run) never sees half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def shard_name(split: str, k: int) -> str:
    return f"{split}_{k:05d}"


class _ShardWriter:
    """Collects one split's documents and writes a shard each time ~shard_tokens have accumulated."""

    def __init__(self, out: Path, split: str, first: int, dtype: np.dtype, shard_tokens: int, key: str,
                 vocab_size: int):  # fmt: skip
        self.out, self.split, self.k, self.dtype = out, split, first, dtype
        self.shard_tokens, self.key, self.vocab_size = shard_tokens, key, vocab_size
        self.pieces: list[np.ndarray] = []
        self.n = 0

    def add(self, index: int, row: np.ndarray) -> None:
        self.pieces.append(row)
        self.n += len(row)
        if self.n >= self.shard_tokens:
            self.flush(index + 1)

    def flush(self, docs_end: int) -> None:
        if not self.pieces:
            return
        tokens = np.concatenate(self.pieces)
        if tokens.max() >= self.vocab_size or tokens.min() < 0:
            bad = tokens.max() if tokens.max() >= self.vocab_size else tokens.min()
            raise ValueError(f"the tokenizer produced id {bad}, outside its vocab_size {self.vocab_size}")
        starts = np.cumsum([0] + [len(p) for p in self.pieces[:-1]], dtype=np.int64)
        name = shard_name(self.split, self.k)
        _atomic_write(self.out / f"{name}.bin", tokens.astype(self.dtype).tobytes())
        _atomic_write(self.out / f"{name}.idx.npy", _npy_bytes(starts))
        done = {"key": self.key, "docs_end": docs_end, "tokens": int(len(tokens)), "documents": len(starts)}
        _atomic_write(self.out / f"{name}.done", json.dumps(done).encode())
        self.pieces, self.n, self.k = [], 0, self.k + 1


def _finished_shards(out: Path, split: str, key: str) -> list[dict[str, Any]]:
    """The leading run of shards whose done marker carries this signature."""
    done = []
    while True:
        name = shard_name(split, len(done))
        try:
            marker = json.loads((out / f"{name}.done").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            break
        if marker.get("key") != key or not all((out / f"{name}{x}").is_file() for x in (".bin", ".idx.npy")):
            break
        done.append({"name": name, **marker})
    return done


def _remove_stale(out: Path, keep: dict[str, int]) -> None:
    """Delete our files that are not part of the kept (finished, same-signature) shards: shards of an
    older run, unfinished shards, temporary files. Only names this module writes are touched."""
    for f in out.iterdir():
        name = f.name
        if name.endswith(".tmp") and name.startswith(SPLITS + ("meta",)):
            f.unlink(missing_ok=True)  # left by a crashed run (we hold the folder's lock: nobody is writing)
            continue
        if name in ("train.bin", "val.bin", "train.docs.npy", "val.docs.npy"):  # the first, unsharded layout
            f.unlink(missing_ok=True)
            continue
        stem, _, suffix = name.partition(".")
        split, _, number = stem.partition("_")
        if split in SPLITS and number.isdigit() and suffix in ("bin", "idx.npy", "done"):
            if int(number) >= keep[split]:
                f.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ the pipeline
@dataclass
class _Job:
    """What one tokenize_corpus call does, resolved from its arguments."""

    files: list[Path]
    tokenizer: Any
    name: str | None
    workers: int
    dtype: np.dtype
    bos: int | None
    eos: int
    signature: dict[str, Any]
    key: str  # a hash of the signature: stamped on every done marker and on meta.json

    def __getattr__(self, field: str) -> Any:  # the settings, by name: job.seed, job.val_fraction, ...
        try:
            return self.__dict__["signature"][field]
        except KeyError:
            raise AttributeError(field) from None


def tokenize_corpus(
    paths: str | Path | Sequence[str | Path],
    tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.01,
    shard_tokens: int = 100_000_000,
    workers: int | None = None,
    seed: int = 0,
    *,
    tokenizer_name: str | None = None,
    text_field: str = "text",
    split_on_blank_lines: bool = True,
    eos_id: int | Literal["auto"] = "auto",
    bos_id: int | None | Literal["auto"] = "auto",
    progress: bool = True,
) -> Path:
    """Encode the corpus at `paths` into train/val token shards in out_dir (see the module docstring).

    workers: encoding processes (None: every core; 1: in this process); the output is byte-identical for
    any number. tokenizer_name: how to load the tokenizer again (a name or path), kept in meta.json.
    Returns out_dir.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    out = Path(out_dir)
    bos, eos = separator_ids(tokenizer, eos_id, bos_id)
    vocab = int(tokenizer.vocab_size)
    files = corpus_files(paths)
    signature = {
        "format": FORMAT,
        "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "text_field": text_field, "split_on_blank_lines": split_on_blank_lines,
        "val_fraction": val_fraction, "seed": seed, "shard_tokens": shard_tokens,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": vocab,
        "bos_id": bos, "eos_id": eos,
    }  # fmt: skip
    job = _Job(
        files=files,
        tokenizer=tokenizer,
        name=tokenizer_name if tokenizer_name is not None else getattr(tokenizer, "name", None),
        workers=(os.cpu_count() or 1) if workers is None else max(1, int(workers)),
        dtype=np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32),
        bos=bos,
        eos=eos,
        signature=signature,
        key=hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16],
    )
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):  # a second process (another DDP rank) waits here, then finds the folder done
        if _meta_key(out) != job.key:
            _run(job, out, progress)
    return out


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / ".lock", "a") as f:  # "a": taking the lock leaves the file (and its mtime) alone
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _meta_key(out: Path) -> str | None:
    try:
        return json.loads((out / "meta.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _run(job: _Job, out: Path, progress: bool) -> None:
    (out / "meta.json").unlink(missing_ok=True)  # from other inputs or settings (or unreadable)
    finished = {s: _finished_shards(out, s, job.key) for s in SPLITS}
    _remove_stale(out, {s: len(finished[s]) for s in SPLITS})
    covered = {s: finished[s][-1]["docs_end"] if finished[s] else 0 for s in SPLITS}
    writers = {
        s: _ShardWriter(out, s, len(finished[s]), job.dtype, job.shard_tokens, job.key, job.vocab_size)
        for s in SPLITS
    }
    head = np.asarray([job.bos] if job.bos is not None else [], dtype=np.int32)
    tail = np.asarray([job.eos], dtype=np.int32)
    val_docs: list[int] = []
    count = 0  # documents read

    from tqdm.auto import tqdm

    bar = tqdm(desc=f"tokenizing ({job.workers} worker{'s' * (job.workers > 1)})", unit="doc",
               disable=not progress)  # fmt: skip

    def chunks() -> Iterator[list[tuple[int, str]]]:
        nonlocal count
        chunk, chars = [], 0
        for i, doc in enumerate(iter_documents(job.files, job.text_field, job.split_on_blank_lines)):
            count = i + 1
            split = "val" if is_val(i, job.seed, job.val_fraction) else "train"
            if split == "val":
                val_docs.append(i)
            if i < covered[split]:
                bar.update()  # in a finished shard: read (to count it) but not encoded again
                continue
            chunk.append((i, doc))
            chars += len(doc)
            if chars >= CHUNK_CHARS:
                yield chunk
                chunk, chars = [], 0
        if chunk:
            yield chunk

    try:
        for i, ids in _encode_stream(chunks(), job.tokenizer, job.workers):
            split = "val" if is_val(i, job.seed, job.val_fraction) else "train"
            writers[split].add(i, np.concatenate([head, ids, tail]))
            bar.update()
        for w in writers.values():
            w.flush(count)
    finally:
        bar.close()

    splits: dict[str, Any] = {}
    for s in SPLITS:
        shards = _finished_shards(out, s, job.key)
        splits[s] = {
            "tokens": sum(d["tokens"] for d in shards),
            "documents": sum(d["documents"] for d in shards),
            "shards": [
                {
                    "file": f"{d['name']}.bin",
                    "offsets": f"{d['name']}.idx.npy",
                    "tokens": d["tokens"],
                    "documents": d["documents"],
                }
                for d in shards
            ],
        }
    if splits["train"]["tokens"] == 0:
        raise ValueError(
            f"the corpus gave no training tokens ({count} documents, all in validation): "
            "lower val_fraction or add documents"
        )
    meta = {
        "format": FORMAT, "key": job.key, "dtype": job.dtype.name, "vocab_size": job.vocab_size,
        "tokenizer": job.name, "tokenizer_class": type(job.tokenizer).__name__,
        "tokenizer_fingerprint": job.tokenizer_fingerprint, "bos_id": job.bos, "eos_id": job.eos,
        "documents": count, "splits": splits,
        "split": {"rule": "blake2b(f'{seed}:{index}') / 2**64 < val_fraction", "seed": job.seed,
                  "val_fraction": job.val_fraction, "val_documents": val_docs},
        "signature": job.signature,
    }  # fmt: skip
    _atomic_write(out / "meta.json", json.dumps(meta, indent=1).encode())


# --------------------------------------------------------------------------------------------- reading
class TokenShards:
    """One split of a tokenized corpus, read-only.

    `num_tokens`, `num_documents`; `doc_starts` / `doc_ends` (int64, offsets in the split's token stream:
    the shards one after another); `read(start, n)` any range, `document(i)` one document's ids;
    `shards` the per-file memmaps; `meta` the parsed meta.json.
    """

    def __init__(self, out_dir: str | Path, split: str = "train"):
        d = Path(out_dir)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not (d / "meta.json").is_file():
            raise ValueError(f"{d}: no meta.json — not a finished token-shard folder (see tokenize_corpus)")
        self.meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            got = self.meta.get("format")
            raise ValueError(
                f"{d}: shard format {got}, this version reads {FORMAT}: tokenize the corpus again"
            )
        self.dir, self.split, self.dtype = d, split, np.dtype(self.meta["dtype"])
        self.shards: list[np.memmap] = []
        starts = []
        base = 0
        for entry in self.meta["splits"][split]["shards"]:
            path, n = d / entry["file"], entry["tokens"]
            if not path.is_file() or path.stat().st_size != n * self.dtype.itemsize:
                raise ValueError(f"{path}: missing or not {n} tokens long (a damaged shard folder?)")
            self.shards.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)))
            starts.append(np.load(d / entry["offsets"]) + base)
            base += n
        # shard k holds tokens [bases[k], bases[k + 1]) of the split
        self.bases = np.cumsum([0] + [len(s) for s in self.shards], dtype=np.int64)
        self.doc_starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self.doc_ends = np.append(self.doc_starts[1:], base).astype(np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.bases[-1])

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    def __len__(self) -> int:
        return self.num_tokens

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of the split (a view when they lie in one shard, else a copy)."""
        if start < 0 or n < 0 or start + n > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + n}) out of range for {self.num_tokens} tokens")
        k = int(np.searchsorted(self.bases, start, side="right")) - 1
        lo = start - int(self.bases[k]) if self.shards else 0
        if not self.shards or lo + n <= len(self.shards[k]):
            return self.shards[k][lo : lo + n] if self.shards else np.zeros(0, dtype=self.dtype)
        parts, left = [], n
        while left > 0:
            piece = self.shards[k][lo : lo + left]
            parts.append(piece)
            left -= len(piece)
            k, lo = k + 1, 0
        return np.concatenate(parts)

    def document(self, i: int) -> np.ndarray:
        """Document i's ids, separators included."""
        return self.read(int(self.doc_starts[i]), int(self.doc_ends[i] - self.doc_starts[i]))

    @property
    def tokens(self) -> np.ndarray:
        """The whole split as one array: the memmap itself when there is one shard, else a copy in memory."""
        if len(self.shards) == 1:
            return self.shards[0]
        return self.read(0, self.num_tokens) if self.shards else np.zeros(0, dtype=self.dtype)
