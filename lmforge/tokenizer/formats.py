"""Tokenizer files: read and write the formats the field uses for byte-level BPE.

- our own JSON (`{"format": "lmforge-bpe", ...}`), readable and round-trippable;
- Hugging Face `tokenizer.json` (model.type "BPE" with a ByteLevel pre-tokenizer/decoder);
- OpenAI GPT-2 `encoder.json` + `vocab.bpe`;
- tiktoken `.tiktoken` rank files (base64 token, rank per line);
- GGUF metadata (`tokenizer.ggml.model == "gpt2"`).

Byte-level vocabularies are stored as *text* in most of these files: GPT-2 maps each of the 256 bytes to
a printable Unicode character (space → "Ġ", newline → "Ċ", ...) so that tokens survive JSON. In memory we
always hold raw bytes; `bytes_to_unicode` is that mapping.
"""

from __future__ import annotations

import base64
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmforge.fileio import atomic_write_text, read_json
from lmforge.tokenizer.base import token_str
from lmforge.tokenizer.bpe import BPETokenizer
from lmforge.tokenizer.gguf_metadata import read_gguf_metadata, require
from lmforge.tokenizer.patterns import CL100K_PATTERN, GGUF_PRE_PATTERNS, GPT2_PATTERN, O200K_PATTERN

FORMAT_NAME = "lmforge-bpe"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (OpenAI encoder.py)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)  # the unprintable bytes go to code points past 255, in order
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_bytes(token: str, where: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(
            f"{where}: token {token!r} has character {e.args[0]!r}, which is not in GPT-2's byte alphabet"
        ) from None


def bytes_to_token(b: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[x] for x in b)


def _parse_merges(raw: list, where: str, vocab_ids: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    merges = []
    for k, m in enumerate(raw):
        if isinstance(m, str):
            halves = m.split(" ")
        elif isinstance(m, list | tuple):
            halves = list(m)
        else:
            halves = []
        if len(halves) != 2:
            raise ValueError(f"{where}: merge #{k} is {m!r}, expected two tokens ('a b' or [a, b])")
        a, b = token_to_bytes(halves[0], where), token_to_bytes(halves[1], where)
        for t in (a, b, a + b):
            if t not in vocab_ids:
                raise ValueError(
                    f"{where}: merge #{k} {m!r} references {bytes_to_token(t)!r}, which is not in the vocabulary"
                )
        merges.append((a, b))
    return merges


def _vocab_from_strings(token_to_id: dict[str, int], where: str) -> dict[int, bytes]:
    if not isinstance(token_to_id, dict) or not token_to_id:
        raise ValueError(f"{where}: the vocabulary must be a non-empty mapping token → id")
    vocab = {}
    for tok, i in token_to_id.items():
        if not isinstance(i, int) or i < 0:
            raise ValueError(f"{where}: token {tok!r} has id {i!r}, expected a non-negative integer")
        if i in vocab:
            raise ValueError(f"{where}: id {i} is used by two tokens")
        vocab[i] = token_to_bytes(tok, where)
    return vocab


# ---------------------------------------------------------------------- tiktoken
TIKTOKEN_KNOWN = {
    "cl100k_base": (
        CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}


def load_tiktoken(
    path: str | os.PathLike, pattern: str | None = None, special_tokens: dict[str, int] | None = None
) -> BPETokenizer:
    """A `.tiktoken` rank file: one 'base64(token) rank' per line; rank order is merge priority."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiktoken file not found: {path}")
    vocab: dict[int, bytes] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                vocab[int(rank)] = base64.b64decode(tok, validate=True)
            except Exception:
                raise ValueError(
                    f"{path}:{lineno}: expected 'base64-token rank', got {line[:60]!r}"
                ) from None
    name = path.name.removesuffix(".tiktoken")
    known_pattern, known_specials = TIKTOKEN_KNOWN.get(name, (GPT2_PATTERN, {}))
    return BPETokenizer(
        vocab,
        None,
        special_tokens if special_tokens is not None else known_specials,
        pattern or known_pattern,
        merge_mode="ranks",
        name=name,
    )


# ---------------------------------------------------------------------- GPT-2 files
def load_gpt2(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> BPETokenizer:
    """OpenAI's original GPT-2 files: encoder.json (token → id) and vocab.bpe (one merge per line)."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    vocab = _vocab_from_strings(read_json(encoder_json), str(encoder_json))
    if not vocab_bpe.is_file():
        raise FileNotFoundError(f"GPT-2 merges file not found: {vocab_bpe}")
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if ln and not ln.startswith("#version")]
    ids = {b: i for i, b in vocab.items()}
    merges = _parse_merges(lines, str(vocab_bpe), ids)
    specials = {"<|endoftext|>": ids[b"<|endoftext|>"]} if b"<|endoftext|>" in ids else {}
    return BPETokenizer(
        vocab, merges, specials, GPT2_PATTERN, name="gpt2", eos_token="<|endoftext|>" if specials else None
    )


# ---------------------------------------------------------------------- Hugging Face tokenizer.json
def _hf_pretokenizer(pre: dict | None, where: str) -> str | tuple[str, ...]:
    """Translate Hugging Face's pre_tokenizer description into our sequence of regexes."""
    if pre is None:
        raise ValueError(f"{where}: byte-level BPE needs a pre_tokenizer")
    kind = pre.get("type")
    if kind == "Sequence":
        stages: list[str] = []
        for p in pre.get("pretokenizers", []):
            stages.extend([s for s in _hf_stage(p, where) if s])
        if not stages:
            raise ValueError(f"{where}: pre_tokenizer Sequence has no splitting step")
        return stages[0] if len(stages) == 1 else tuple(stages)
    stages = [s for s in _hf_stage(pre, where) if s]
    if not stages:
        raise ValueError(f"{where}: pre_tokenizer {kind} does not split text")
    return stages[0]


def _hf_stage(p: dict, where: str) -> list[str]:
    kind = p.get("type")
    if kind == "ByteLevel":
        if p.get("add_prefix_space"):
            raise ValueError(f"{where}: ByteLevel add_prefix_space=true is not supported")
        return [GPT2_PATTERN] if p.get("use_regex", True) else []
    if kind == "Split":
        pat = p.get("pattern", {})
        if p.get("invert") or p.get("behavior", "").lower() != "isolated" or "Regex" not in pat:
            raise ValueError(f"{where}: only Split(Regex, behavior=Isolated) is supported, got {p}")
        return [pat["Regex"]]
    if kind == "Digits":
        return [r"\p{N}" if p.get("individual_digits") else r"\p{N}+"]
    raise ValueError(f"{where}: pre-tokenizer type {kind!r} is not supported for byte-level BPE")


def load_hf_json(path: str | os.PathLike) -> BPETokenizer:
    """A Hugging Face tokenizer.json for a byte-level BPE model (GPT-2, Llama 3, SmolLM2, Qwen ...)."""
    path = Path(path)
    data = read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    # Old files (e.g. GPT-2's) omit model.type; a model with merges is BPE.
    if not isinstance(model, dict) or model.get("type", "BPE" if "merges" in model else None) != "BPE":
        raise ValueError(
            f"{path}: expected a tokenizer.json with model.type 'BPE', got {model and model.get('type')!r}"
        )
    if model.get("byte_fallback"):
        raise ValueError(
            f"{path}: this is a SentencePiece-style BPE (byte_fallback); load it with load_tokenizer()"
        )
    specials = {t["content"]: t["id"] for t in data.get("added_tokens") or []}
    raw_vocab = model.get("vocab")
    if isinstance(raw_vocab, dict):
        # Added tokens are stored as raw text (not in the byte alphabet), in model.vocab or not.
        raw_vocab = {t: i for t, i in raw_vocab.items() if t not in specials}
    vocab = _vocab_from_strings(raw_vocab, str(path))
    merges = _parse_merges(model.get("merges") or [], str(path), {b: i for i, b in vocab.items()})
    for tok, i in specials.items():
        vocab[i] = tok.encode("utf-8")
    config = (
        read_json(path.parent / "tokenizer_config.json")
        if (path.parent / "tokenizer_config.json").is_file()
        else {}
    )
    return BPETokenizer(
        vocab,
        merges,
        specials,
        _hf_pretokenizer(data.get("pre_tokenizer"), str(path)),
        ignore_merges=bool(model.get("ignore_merges")),
        chat_template=config.get("chat_template") if isinstance(config.get("chat_template"), str) else None,
        bos_token=token_str(config.get("bos_token")),
        eos_token=token_str(config.get("eos_token")),
        name=path.parent.name,
    )


# ---------------------------------------------------------------------- GGUF
def load_gguf_bpe(path: str | os.PathLike) -> BPETokenizer:
    """The tokenizer inside a GGUF model file whose tokenizer.ggml.model is 'gpt2' (byte-level BPE)."""
    meta = read_gguf_metadata(path)
    kind = require(meta, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; byte-level BPE needs 'gpt2'")
    tokens = require(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(
            f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_PATTERNS:
        raise ValueError(
            f"{path}: pre-tokenizer {pre!r} is not known; known: {', '.join(sorted(GGUF_PRE_PATTERNS))}"
        )
    vocab: dict[int, bytes] = {}
    specials: dict[str, int] = {}
    where = f"{path}: tokenizer.ggml.tokens"
    for i, (tok, typ) in enumerate(zip(tokens, types, strict=True)):
        if typ in (3, 4):  # control and user-defined tokens are matched verbatim in text
            specials[tok] = i
            vocab[i] = tok.encode("utf-8")
        else:
            vocab[i] = token_to_bytes(tok, where)
    ids: dict[bytes, int] = {}
    for i, b in vocab.items():
        if i not in specials.values():
            ids.setdefault(b, i)
    merges = _parse_merges(
        require(meta, "tokenizer.ggml.merges", path), f"{path}: tokenizer.ggml.merges", ids
    )

    def tok_of(key: str) -> str | None:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    return BPETokenizer(
        vocab,
        merges,
        specials,
        GGUF_PRE_PATTERNS[pre],
        chat_template=meta.get("tokenizer.chat_template"),
        bos_token=tok_of("tokenizer.ggml.bos_token_id"),
        eos_token=tok_of("tokenizer.ggml.eos_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        name=meta.get("general.name") or Path(path).stem,
    )


# ---------------------------------------------------------------------- our own format
def load_lmforge(path: str | os.PathLike) -> BPETokenizer:
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f'{path}: not an lmforge tokenizer file (expected "format": "{FORMAT_NAME}")')
    for key in ("vocab", "merges", "pattern"):
        if key not in data:
            raise ValueError(f"{path}: missing field '{key}'")
    specials = data.get("special_tokens") or {}
    if not isinstance(data["vocab"], dict):
        raise ValueError(f"{path}: 'vocab' must be a mapping token → id")
    vocab = _vocab_from_strings({t: i for t, i in data["vocab"].items() if t not in specials}, str(path))
    for tok, i in specials.items():
        vocab[i] = tok.encode("utf-8")
    merges = _parse_merges(data["merges"], str(path), {b: i for i, b in vocab.items()})
    pattern = data["pattern"] if isinstance(data["pattern"], str) else tuple(data["pattern"])
    return BPETokenizer(
        vocab,
        merges,
        specials,
        pattern,
        merge_mode=data.get("merge_mode", "merges"),
        chat_template=data.get("chat_template"),
        bos_token=data.get("bos_token"),
        eos_token=data.get("eos_token"),
        name=data.get("name"),
    )


def save_tokenizer(tok: BPETokenizer, path: str | os.PathLike, format: str = "lmforge") -> None:
    """Write `tok` as our JSON ("lmforge") or as a Hugging Face tokenizer.json ("hf")."""
    path = Path(path)
    special_ids = {i: s for s, i in tok.special_tokens.items()}
    # Special tokens keep their raw text (Hugging Face lists them in model.vocab that way too).
    vocab = {
        special_ids[i] if i in special_ids else bytes_to_token(b): i for i, b in sorted(tok.vocab.items())
    }
    merges = [f"{bytes_to_token(a)} {bytes_to_token(b)}" for a, b in tok.merges]
    if format == "lmforge":
        data = {
            "format": FORMAT_NAME,
            "version": 1,
            "name": tok.name,
            "pattern": tok.pattern if isinstance(tok.pattern, str) else list(tok.pattern),
            "merge_mode": tok.merge_mode,
            "special_tokens": tok.special_tokens,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "chat_template": tok.chat_template,
            "vocab": vocab,
            "merges": merges,
        }
    elif format == "hf":
        if tok.merge_mode != "merges":
            raise ValueError("a rank-based (tiktoken) tokenizer has no exact tokenizer.json form")
        stages = [tok.pattern] if isinstance(tok.pattern, str) else list(tok.pattern)
        pretok = [
            {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
            for p in stages
        ]
        pretok.append(
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        )
        data = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": s,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
            ],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretok},
            "post_processor": None,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": tok.ignore_merges,
                "vocab": vocab,
                "merges": merges,
            },
        }
    else:
        raise ValueError(f"unknown tokenizer format {format!r}; use 'lmforge' or 'hf'")
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))


# ---------------------------------------------------------------------- detection
def load_bpe(path: str | os.PathLike, **kwargs: Any) -> BPETokenizer:
    """Load a byte-level BPE tokenizer, detecting the format from the file (or folder) given."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "encoder.json", "vocab.json"):
            if (path / name).is_file():
                if name == "tokenizer.json":
                    return load_hf_json(path / name)
                merges = path / ("vocab.bpe" if name == "encoder.json" else "merges.txt")
                return load_gpt2(path / name, merges)
        raise FileNotFoundError(
            f"{path}: no tokenizer.json, encoder.json + vocab.bpe or vocab.json + merges.txt in this folder"
        )
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    if path.suffix == ".tiktoken":
        return load_tiktoken(path, **kwargs)
    if path.suffix == ".gguf":
        return load_gguf_bpe(path)
    if path.suffix == ".bpe":
        return load_gpt2(path.parent / "encoder.json", path)
    data = read_json(path)
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        return load_lmforge(path)
    if isinstance(data, dict) and "model" in data:
        return load_hf_json(path)
    if isinstance(data, dict) and (path.parent / "vocab.bpe").is_file():
        return load_gpt2(path, path.parent / "vocab.bpe")
    raise ValueError(
        f"{path}: not a tokenizer format we know (lmforge JSON, tokenizer.json, encoder.json, .tiktoken, .gguf)"
    )
