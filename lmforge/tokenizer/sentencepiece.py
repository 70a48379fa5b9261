"""SentencePiece-style BPE: the tokenizer of Llama 2, Gemma and many T5-era models.

SentencePiece (Kudo & Richardson 2018) treats text as a plain sequence of Unicode characters, spaces
included: a space becomes the visible symbol "▁" (U+2581), so "Hello world" is "Hello▁world" and a
token like "▁world" carries its own leading space. Decoding is then lossless: join the pieces and turn
"▁" back into " ". Its BPE model (Sennrich et al. 2016) differs from byte-level BPE in three ways:

  1. the symbols are *characters* (code points), not bytes, so "中" is one symbol;
  2. there is no merge list: each vocabulary piece has a *score* (for BPE, minus the order in which
     training learned it), and the next merge is the adjacent pair whose concatenation is a piece with
     the highest score (ties: the leftmost pair);
  3. a character that is not in the vocabulary is written as its UTF-8 bytes with the 256 byte tokens
     `<0x00>`..`<0xFF>` ("byte fallback"), or as the unknown token when the model has none.

Pieces also have types: normal pieces take part in merges; *user-defined* pieces (Gemma's "\\n",
"  ", "<table>") are matched whole in the text before BPE and never merged with anything; *control*
pieces (`<bos>`, `<start_of_turn>`) never come out of BPE, and like Hugging Face we match their text
as a special token (encode(..., allow_special=False) treats it as plain text, as SentencePiece does);
*unused* pieces may be formed by merges but are written as the two pieces they were made of.

Encoding a text goes:
  1. normalize: " " → "▁" (the only normalization Gemma and Llama 2 do), and the "dummy prefix": a "▁"
     put in front of the text so the first word looks like every other word (Llama 2 yes, Gemma no);
  2. cut out control and user-defined pieces (longest match wins);
  3. BPE over the characters of each remaining chunk, then byte fallback.
A chunk is cut further into words at each "▁" (a merge can only cross a "▁" if some piece has "▁"
inside it; we check which pieces do and keep those spots joined), and BPE results are cached per word,
so the hot loop is a regex and dictionary look-ups. Long words (a run of 5,000 "a"s) use a heap over a
linked list, O(n log n).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from lmforge.fileio import atomic_write_text, read_json
from lmforge.tokenizer.base import MissCache, Tokenizer, token_str
from lmforge.tokenizer.bpe import merge_by_concat, merge_heap
from lmforge.tokenizer.gguf_metadata import read_gguf_metadata, require

SPACE = "\u2581"  # "▁", SentencePiece's visible space

# Piece types, numbered as in SentencePiece's ModelProto and in GGUF's tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_TYPE_NAMES = {1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused", 6: "byte"}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SHORT = 48  # words up to this many characters use the simple loop; longer ones the heap


def _trie_regex(words: Iterable[str]) -> re.Pattern | None:
    """One regex matching any of `words`, the longest one where several start at the same place.

    Built from a trie ("ab", "abc" → `ab(?:c)?`): children of a node start with different characters,
    so the greedy `?` tries the longer word first and backs off to a shorter one only if it fails.
    With thousands of words (Gemma has 6,400 control and user-defined pieces) this is much faster
    than an alternation of the words.
    """
    trie: dict = {}
    for w in words:
        if not w:
            continue
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}  # end-of-word marker
    if not trie:
        return None

    def build(node: dict) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(build(trie))


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece BPE model: pieces (as the model file spells them), their scores and types.

    pieces[i] is the text of id i ("▁the", "<0x0A>", "<bos>"), types[i] its type (NORMAL, CONTROL, ...,
    numbered as in SentencePiece and GGUF). A score of None marks a piece no merge may produce (it can
    still be a single character). add_dummy_prefix puts "▁" in front of the text, and after each control
    token, as Hugging Face's Prepend normalizer does. fuse_unk writes a run of unknown characters as one
    unknown token (SentencePiece does; it only matters without byte fallback).
    """

    def __init__(
        self,
        pieces: Sequence[str],
        scores: Sequence[float | None],
        types: Sequence[int] | None = None,
        *,
        unk_id: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        add_dummy_prefix: bool = False,
        fuse_unk: bool = True,
        chat_template: str | None = None,
        name: str | None = None,
        cache_size: int = 1 << 18,
    ):
        n = len(pieces)
        types = [NORMAL] * n if types is None else list(types)
        if len(scores) != n or len(types) != n:
            raise ValueError(f"{n} pieces but {len(scores)} scores and {len(types)} types")
        for key, i in (("unk_id", unk_id), ("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if i is not None and not 0 <= i < n:
                raise ValueError(f"{key} {i} is outside the vocabulary (size {n})")
        self.pieces = list(pieces)
        self.scores = list(scores)
        self.types = types
        self.unk_id, self.pad_id = unk_id, pad_id
        self.add_bos, self.add_eos = add_bos, add_eos
        self.add_dummy_prefix = add_dummy_prefix
        self.fuse_unk = fuse_unk
        self.chat_template = chat_template
        self.name = name
        self.bos_token = pieces[bos_id] if bos_id is not None else None
        self.eos_token = pieces[eos_id] if eos_id is not None else None

        # What BPE may produce and look up. Like SentencePiece, normal, user-defined and unused pieces
        # are "pieces"; control, unknown and byte pieces are reserved: text never turns into them.
        self._piece_ids: dict[str, int] = {}
        # piece → rank (= -score: lower merges first), for the pieces a merge may produce
        self._merge_rank: dict[str, float] = {}
        self._unused: set[str] = set()
        self._byte_ids: list[int] = [-1] * 256
        self.vocab: dict[int, bytes] = {}
        self.special_tokens: dict[str, int] = {}
        self._control_ids: set[int] = set()
        control: list[str] = []
        user: list[str] = []
        for i, (piece, score, typ) in enumerate(zip(self.pieces, self.scores, self.types)):
            if typ not in _TYPE_NAMES:
                raise ValueError(f"piece {i} ({piece!r}) has unknown type {typ}")
            if not piece:
                raise ValueError(f"piece {i} is empty")
            if typ == BYTE:
                m = _BYTE_PIECE.fullmatch(piece)
                if m is None:
                    raise ValueError(f"piece {i} is a byte piece but is spelled {piece!r}, not <0xNN>")
                self._byte_ids[int(m.group(1), 16)] = i
                self.vocab[i] = bytes([int(m.group(1), 16)])
                continue
            # Decoding turns "▁" back into a space in every piece (Hugging Face's Replace decoder does).
            self.vocab[i] = piece.replace(SPACE, " ").encode("utf-8")
            if typ in (CONTROL, UNKNOWN):
                self.special_tokens.setdefault(piece, i)
                self._control_ids.add(i)
                control.append(piece)
                continue
            self._piece_ids.setdefault(piece, i)
            if typ == USER_DEFINED:
                self.special_tokens.setdefault(piece, i)
                user.append(piece)
            if score is not None and len(piece) > 1:
                self._merge_rank.setdefault(piece, -float(score))
            if typ == UNUSED:
                self._unused.add(piece)
        self.has_byte_fallback = min(self._byte_ids) >= 0
        self._byte_value = {i: b for b, i in enumerate(self._byte_ids) if i >= 0}  # id → byte, for decode
        if not self.has_byte_fallback and unk_id is None:
            raise ValueError("a SentencePiece model needs byte pieces <0x00>..<0xFF> or an unknown piece")

        # Special pieces are matched in the *normalized* text, so a piece spelled with spaces (Gemma's
        # GGUF writes its whitespace-run pieces as "  ") is looked for as "▁▁", like SentencePiece does.
        def norm(p: str) -> str:
            return p.replace(" ", SPACE)

        self._re_user = _trie_regex(map(norm, user))
        self._re_control = _trie_regex(map(norm, control))
        self._re_all = _trie_regex(map(norm, control + user))
        self._special_ids = {norm(p): i for p, i in self.special_tokens.items()}

        # Cutting chunks into words at "▁" is safe unless a piece has "▁" after its first character
        # (Gemma has one: ">▁</"); where such a piece occurs in a chunk we do not cut.
        bridges = [p for p in self._merge_rank if SPACE in p[1:]]
        self._bridges = bridges
        self._re_bridge = _trie_regex(bridges)
        self._word_re = re.compile(f"{SPACE}[^{SPACE}]*|[^{SPACE}]+")
        self._cache = MissCache(self._bpe, cache_size)

    # ------------------------------------------------------------------ BPE on one word
    def _bpe(self, word: str) -> tuple[int, ...]:
        """BPE over the characters of `word`, then map pieces to ids (with byte fallback)."""
        if len(word) > _SHORT or self._unused:
            return self._to_ids(self._bpe_heap(word))
        return self._to_ids(merge_by_concat(list(word), self._merge_rank))

    def _bpe_heap(self, word: str) -> list[str]:
        """The same merges in O(n log n): a heap of (rank = -score, position) over a linked list.

        This is SentencePiece's own algorithm (bpe_model.cc), including its handling of unused pieces:
        one formed by a merge is split again into the last pair recorded for that string.
        """
        get, unused = self._merge_rank.get, self._unused
        rev_merge: dict[str, tuple[str, str]] = {}

        def rank_of(a: str, b: str) -> float | None:
            r = get(a + b)
            if r is not None and unused and a + b in unused:
                rev_merge[a + b] = (a, b)
            return r

        out = merge_heap(list(word), rank_of)
        if unused:
            out = list(chain.from_iterable(self._resegment(p, rev_merge) for p in out))
        return out

    def _resegment(self, piece: str, rev_merge: dict[str, tuple[str, str]]) -> list[str]:
        if piece not in self._unused or piece not in rev_merge:
            return [piece]
        a, b = rev_merge[piece]
        return self._resegment(a, rev_merge) + self._resegment(b, rev_merge)

    def _to_ids(self, parts: list[str]) -> tuple[int, ...]:
        ids = self._piece_ids
        out: list[int] = []
        for p in parts:
            i = ids.get(p)
            if i is not None:
                out.append(i)
            elif self.has_byte_fallback:
                # Only single characters can be missing (a merge always makes a known piece).
                # Lone surrogates (broken UTF-16) have no UTF-8 form: they become U+FFFD, as elsewhere.
                data = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in p).encode("utf-8")
                out.extend(self._byte_ids[b] for b in data)
            elif not (self.fuse_unk and out and out[-1] == self.unk_id):
                out.append(self.unk_id)
        return tuple(out)

    # ------------------------------------------------------------------ encoding
    def _words(self, chunk: str) -> list[str]:
        """Cut a normalized chunk before each "▁", except inside a piece that has "▁" in it."""
        words = self._word_re.findall(chunk)
        if self._re_bridge is None or len(words) < 2 or not self._re_bridge.search(chunk):
            return words
        keep = set()  # positions of "▁" that must not start a new word
        for piece in self._bridges:
            start = chunk.find(piece)
            while start >= 0:
                keep.update(start + k for k in range(1, len(piece)) if piece[k] == SPACE)
                start = chunk.find(piece, start + 1)
        out, pos = [], 0
        for w in words:
            if pos in keep and out:
                out[-1] += w
            else:
                out.append(w)
            pos += len(w)
        return out

    def _encode_chunk(self, chunk: str, out: list[int]) -> None:
        # map() + chain() keep the loop in C; only cache misses run Python (the BPE above).
        ids = chain.from_iterable(map(self._cache.__getitem__, self._words(chunk)))
        if self.has_byte_fallback or not self.fuse_unk:
            out.extend(ids)
            return
        unk = self.unk_id
        for x in ids:  # an unknown run may span two words: fuse across them too
            if not (x == unk and out and out[-1] == unk):
                out.append(x)

    def _encode_normalized(self, text: str, pattern: re.Pattern | None, out: list[int]) -> None:
        """Encode normalized text, cutting out the special pieces `pattern` matches."""
        if pattern is None:
            if text:
                self._encode_chunk(text, out)
            return
        specials, pos = self._special_ids, 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                self._encode_chunk(text[pos : m.start()], out)
            out.append(specials[m.group()])
            pos = m.end()
        if pos < len(text):
            self._encode_chunk(text[pos:], out)

    def encode(self, text: str, add_special_tokens: bool = False, allow_special: bool = True) -> list[int]:
        """Text → ids.

        add_special_tokens adds BOS/EOS when the model file asks for them (like Hugging Face's
        `tokenizer(text)`). allow_special=False encodes control-token text such as "<start_of_turn>"
        as the characters it is made of (as SentencePiece itself does); user-defined pieces are part
        of the model and are always matched.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        if add_special_tokens and self.add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        text = text.replace(" ", SPACE)
        if not self.add_dummy_prefix:
            self._encode_normalized(text, self._re_all if allow_special else self._re_user, ids)
        else:
            # The prefix goes in front of each non-empty stretch between control tokens, before the
            # user-defined pieces are cut out (Hugging Face's Prepend normalizer runs at that point).
            pos = 0
            matches = self._re_control.finditer(text) if allow_special and self._re_control else ()
            for m in matches:
                if m.start() > pos:
                    self._encode_normalized(SPACE + text[pos : m.start()], self._re_user, ids)
                ids.append(self._special_ids[m.group()])
                pos = m.end()
            if pos < len(text):
                self._encode_normalized(SPACE + text[pos:], self._re_user, ids)
        if add_special_tokens and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: list[str], **kwargs: Any) -> list[list[int]]:
        return [self.encode(t, **kwargs) for t in texts]

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """Text → pieces as the model spells them ("▁Hello", "<0xF0>"): handy for looking at a split."""
        return [self.pieces[i] for i in self.encode(text, **kwargs)]

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids → text, as Hugging Face decodes a SentencePiece BPE (Replace ▁, ByteFallback, Fuse).

        A run of byte tokens that is not valid UTF-8 becomes one U+FFFD per byte (Hugging Face's
        ByteFallback decoder); decoding never raises on such bytes. With a dummy prefix, one leading
        space of the result is dropped (the Strip decoder of Llama 2's tokenizer.json).
        """
        byte_of, vocab, control = self._byte_value, self.vocab, self._control_ids
        out: list[str] = []
        run = bytearray()
        for i in ids:
            b = byte_of.get(i)
            if b is not None:
                run.append(b)
                continue
            if skip_special_tokens and i in control:
                continue  # dropped before decoding, so byte runs on both sides join up
            if run:
                out.append(_decode_byte_run(run))
                run.clear()
            try:
                out.append(vocab[i].decode("utf-8"))
            except (KeyError, TypeError):
                raise ValueError(
                    f"token id {i!r} is not in the vocabulary (size {self.vocab_size})"
                ) from None
        if run:
            out.append(_decode_byte_run(run))
        text = "".join(out)
        if self.add_dummy_prefix and text.startswith(" "):
            text = text[1:]
        return text

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes the ids stand for (byte tokens as bytes, "▁" as a space, no prefix stripping)."""
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except KeyError as e:
            raise ValueError(
                f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})"
            ) from None

    # ------------------------------------------------------------------ look-ups
    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def token_to_id(self, token: str) -> int | None:
        """The id of a piece as the model spells it ("▁the"), or of a special token."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        if token in self._piece_ids:
            return self._piece_ids[token]
        m = _BYTE_PIECE.fullmatch(token)
        return self._byte_ids[int(m.group(1), 16)] if m and self.has_byte_fallback else None

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]

    # ------------------------------------------------------------------ files
    @classmethod
    def from_gguf(cls, path: str | os.PathLike, **kwargs: Any) -> SentencePieceTokenizer:
        """The tokenizer of a GGUF file whose tokenizer.ggml.model is "llama" (llama.cpp's "SPM")."""
        meta = read_gguf_metadata(path)
        kind = require(meta, "tokenizer.ggml.model", path)
        if kind != "llama":
            raise ValueError(
                f"{path}: tokenizer.ggml.model is {kind!r}; a SentencePiece BPE tokenizer needs 'llama'"
            )
        tokens = require(meta, "tokenizer.ggml.tokens", path)
        scores = require(meta, "tokenizer.ggml.scores", path)
        if len(scores) != len(tokens):
            raise ValueError(
                f"{path}: tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} "
                "tokenizer.ggml.tokens"
            )
        types = meta.get("tokenizer.ggml.token_type")
        if types is None:  # old files: byte pieces by their spelling, the rest normal
            types = [BYTE if _BYTE_PIECE.fullmatch(t) else NORMAL for t in tokens]
        if len(types) != len(tokens):
            raise ValueError(
                f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} "
                "tokenizer.ggml.tokens"
            )

        def token_id(key: str) -> int | None:
            i = meta.get(f"tokenizer.ggml.{key}")
            if i is None:
                return None
            if not isinstance(i, int) or not 0 <= i < len(tokens):
                raise ValueError(f"{path}: tokenizer.ggml.{key} is {i!r}, not an id below {len(tokens)}")
            return i

        # llama.cpp adds the dummy prefix unless the file says otherwise; Gemma's SentencePiece model
        # has add_dummy_prefix=false, so files of the Gemma family that predate the key get no prefix.
        arch = str(meta.get("general.architecture", ""))
        prefix = meta.get("tokenizer.ggml.add_space_prefix", not arch.startswith("gemma"))
        options: dict[str, Any] = dict(
            unk_id=token_id("unknown_token_id"),
            bos_id=token_id("bos_token_id"),
            eos_id=token_id("eos_token_id"),
            pad_id=token_id("padding_token_id"),
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            add_dummy_prefix=bool(prefix),
            chat_template=meta.get("tokenizer.chat_template"),
            name=meta.get("general.name") or Path(path).stem,
        )
        options.update(kwargs)
        try:
            return cls(tokens, scores, [int(t) for t in types], **options)
        except ValueError as e:
            raise ValueError(f"{path}: tokenizer.ggml.tokens/token_type: {e}") from None

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike, **kwargs: Any) -> SentencePieceTokenizer:
        """A Hugging Face tokenizer.json of a SentencePiece BPE (model.type "BPE" with byte_fallback).

        Such files store merges, not scores: a piece's score is minus the rank of the first merge that
        makes it. The normalizer must be Replace(" " → "▁"), optionally with Prepend("▁") for the
        dummy prefix (Llama 2); Metaspace without a prefix and Gemma's no-op Split(" ") pre-tokenizer
        are accepted too. A tokenizer_config.json beside the file supplies BOS/EOS and the chat template.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        data = read_json(path)
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            got = model.get("type") if isinstance(model, dict) else None
            raise ValueError(f"{path}: model.type must be 'BPE' for a SentencePiece BPE, got {got!r}")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError(f"{path}: model.vocab must be a non-empty mapping piece → id")
        size = max(vocab.values()) + 1
        added = {t["id"]: t for t in data.get("added_tokens") or []}
        size = max([size, *[i + 1 for i in added]])
        pieces: list[str | None] = [None] * size
        for piece, i in vocab.items():
            pieces[i] = piece
        for i, t in added.items():
            pieces[i] = t["content"]
        missing = [i for i, p in enumerate(pieces) if p is None]
        if missing:
            raise ValueError(f"{path}: model.vocab has no piece for ids {missing[:5]}")

        # Scores from merge ranks: the earlier a piece is first made, the higher its score.
        scores: list[float | None] = [None] * size
        for rank, merge in enumerate(model.get("merges") or []):
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
            i = vocab.get(a + b)
            if i is None:
                raise ValueError(
                    f"{path}: model.merges #{rank} ({a!r}, {b!r}) makes a piece not in model.vocab"
                )
            if scores[i] is None:
                scores[i] = -float(rank)

        byte_fallback = bool(model.get("byte_fallback"))
        unk_id = pieces.index(model["unk_token"]) if model.get("unk_token") in pieces else None
        types = []
        for i, piece in enumerate(pieces):
            if i in added:
                types.append(CONTROL if added[i].get("special") else USER_DEFINED)
            elif byte_fallback and _BYTE_PIECE.fullmatch(piece):
                types.append(BYTE)
            elif i == unk_id:
                types.append(UNKNOWN)
            else:
                types.append(NORMAL)
        add_dummy_prefix = _hf_dummy_prefix(data, path)

        # BOS/EOS: tokenizer_config.json when there is one, else the post-processor's template.
        bos = eos = None
        add_bos = add_eos = False
        post = data.get("post_processor") or {}
        if post.get("type") == "TemplateProcessing":
            single = post.get("single") or []
            seq = next((k for k, s in enumerate(single) if "Sequence" in s), len(single))
            for k, s in enumerate(single):
                if "SpecialToken" in s:
                    if k < seq:
                        bos, add_bos = s["SpecialToken"]["id"], True
                    else:
                        eos, add_eos = s["SpecialToken"]["id"], True
        config_path = path.parent / "tokenizer_config.json"
        config: dict[str, Any] = read_json(config_path) if config_path.is_file() else {}
        bos = token_str(config.get("bos_token")) or bos
        eos = token_str(config.get("eos_token")) or eos
        add_bos = bool(config.get("add_bos_token", add_bos))
        add_eos = bool(config.get("add_eos_token", add_eos))
        ids = {p: i for i, p in enumerate(pieces)}
        options: dict[str, Any] = dict(
            unk_id=unk_id,
            bos_id=ids.get(bos) if bos else None,
            eos_id=ids.get(eos) if eos else None,
            pad_id=ids.get(token_str(config.get("pad_token"))) if config.get("pad_token") else None,
            add_bos=add_bos,
            add_eos=add_eos,
            add_dummy_prefix=add_dummy_prefix,
            fuse_unk=bool(model.get("fuse_unk", False)),
            chat_template=config.get("chat_template")
            if isinstance(config.get("chat_template"), str)
            else None,
            name=path.parent.name,
        )
        options.update(kwargs)
        try:
            return cls(pieces, scores, types, **options)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_hf_json(self) -> str:
        """This tokenizer as a Hugging Face tokenizer.json (BPE + byte_fallback), for `tokenizers`.

        Merges are every split of each piece into two pieces, best score first: Hugging Face ranks a
        pair by its merge position, we rank it by the score of what it makes, and this list makes the
        two agree. Control pieces become special added tokens, user-defined pieces plain added tokens.
        One thing does not carry over: with a dummy prefix, Hugging Face also prefixes the text after a
        user-defined piece (its Prepend normalizer runs on every stretch between added tokens).
        """
        known = self._piece_ids
        merges = []
        for piece, _ in sorted(self._merge_rank.items(), key=lambda kv: kv[1]):
            merges.extend(
                [piece[:k], piece[k:]]
                for k in range(1, len(piece))
                if piece[:k] in known and piece[k:] in known
            )
        added = []
        user_normalized = not self.add_dummy_prefix
        for i, (piece, typ) in enumerate(zip(self.pieces, self.types)):
            if typ in (CONTROL, UNKNOWN, USER_DEFINED):
                added.append(
                    {
                        "id": i,
                        "content": piece if user_normalized else piece.replace(SPACE, " "),
                        "single_word": False,
                        "lstrip": False,
                        "rstrip": False,
                        # Matched in the normalized text, as we do, unless the normalizer would put a
                        # prefix into the piece itself; then in the raw text, spelled with spaces.
                        "normalized": typ == USER_DEFINED and user_normalized,
                        "special": typ != USER_DEFINED,
                    }
                )
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
        normalizer = (
            {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}
            if self.add_dummy_prefix
            else replace
        )
        decoders = [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if self.add_dummy_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        single: list[dict] = [{"Sequence": {"id": "A", "type_id": 0}}]
        specials: dict[str, Any] = {}
        for token, on, front in ((self.bos_token, self.add_bos, True), (self.eos_token, self.add_eos, False)):
            if token is not None and on:
                entry = {"SpecialToken": {"id": token, "type_id": 0}}
                single.insert(0, entry) if front else single.append(entry)
                specials[token] = {"id": token, "ids": [self.special_tokens[token]], "tokens": [token]}
        data = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": None,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": single,
                "pair": single,
                "special_tokens": specials,
            }
            if specials
            else None,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": self.pieces[self.unk_id] if self.unk_id is not None else None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": self.fuse_unk,
                "byte_fallback": self.has_byte_fallback,
                "ignore_merges": False,
                "vocab": {p: i for i, p in enumerate(self.pieces)},
                "merges": merges,
            },
        }
        return json.dumps(data, ensure_ascii=False)

    def save_hf_json(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json (and tokenizer_config.json beside it, for BOS/EOS and the chat template)."""
        path = Path(path)
        atomic_write_text(path, self.to_hf_json())
        config = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.pieces[self.unk_id] if self.unk_id is not None else None,
            "pad_token": self.pieces[self.pad_id] if self.pad_id is not None else None,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "chat_template": self.chat_template,
        }
        atomic_write_text(path.parent / "tokenizer_config.json", json.dumps(config, ensure_ascii=False))

    def __repr__(self) -> str:
        return (
            f"SentencePieceTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"byte_fallback={self.has_byte_fallback}, dummy_prefix={self.add_dummy_prefix})"
        )


def _decode_byte_run(run: bytearray) -> str:
    # Hugging Face's ByteFallback: a run of byte tokens that is not valid UTF-8 as a whole becomes
    # one U+FFFD per byte (Python's errors="replace" would give one per invalid sequence instead).
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)


def _hf_dummy_prefix(data: dict, path: Path) -> bool:
    """Whether a tokenizer.json adds the "▁" dummy prefix; refuses normalizers we do not reproduce."""
    norm = data.get("normalizer")
    steps = (
        norm.get("normalizers", []) if isinstance(norm, dict) and norm.get("type") == "Sequence" else [norm]
    )
    prefix = replace = False
    for step in steps:
        if step is None:
            continue
        kind = step.get("type")
        if kind == "Prepend" and step.get("prepend") == SPACE and not replace:
            prefix = True
        elif (
            kind == "Replace"
            and step.get("pattern", {}).get("String") == " "
            and step.get("content") == SPACE
        ):
            replace = True
        else:
            raise ValueError(
                f"{path}: normalizer {step} is not supported (expected Replace(' ', '▁') / Prepend('▁'))"
            )
    pre = data.get("pre_tokenizer")
    if isinstance(pre, dict):
        kind = pre.get("type")
        if kind == "Metaspace" and pre.get("replacement", SPACE) == SPACE:
            scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
            if scheme != "never":
                raise ValueError(
                    f"{path}: pre_tokenizer Metaspace with prepend_scheme={scheme!r} is not supported "
                    "(use a Prepend normalizer)"
                )
            replace = True
        elif not (kind == "Split" and pre.get("pattern", {}).get("String") == " " and not pre.get("invert")):
            raise ValueError(f"{path}: pre_tokenizer {kind!r} is not supported for a SentencePiece BPE")
    if not replace:
        raise ValueError(
            f"{path}: normalizer does not replace ' ' with '▁'; not a SentencePiece-style tokenizer"
        )
    return prefix


def load_sentencepiece(path: str | os.PathLike, **kwargs: Any) -> SentencePieceTokenizer:
    """Load a SentencePiece BPE tokenizer from a GGUF file, a tokenizer.json or a folder holding one."""
    path = Path(path)
    if path.suffix == ".gguf":
        return SentencePieceTokenizer.from_gguf(path, **kwargs)
    if path.is_dir() or path.suffix == ".json":
        return SentencePieceTokenizer.from_hf_json(path, **kwargs)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    raise ValueError(f"{path}: expected a .gguf file or a tokenizer.json for a SentencePiece BPE tokenizer")
