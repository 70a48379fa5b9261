"""Byte-level BPE: the tokenizer of GPT-2, GPT-4, Llama 3 and SmolLM2.

Byte Pair Encoding (Sennrich et al. 2016) starts from single symbols and repeatedly joins the pair of
neighbours that training found most useful. *Byte-level* BPE (Radford et al. 2019, GPT-2) starts from
the 256 byte values of the UTF-8 text, so every string can be encoded and nothing is ever "unknown".

Encoding a text goes:
  1. split out special tokens (`<|endoftext|>`, `<|im_start|>`, ...): they map straight to their id;
  2. pre-tokenize the rest with a regex (see patterns.py) into pieces such as " hello" or "123";
  3. run BPE inside each piece: start from its bytes and keep merging the adjacent pair with the best
     (lowest) rank until no known pair is left; map the resulting byte strings to ids.
Real text repeats its pieces (" the" appears thousands of times), so step 3 is cached per piece and
the hot loop is little more than the regex plus dictionary look-ups.

Two ways to rank a pair exist in the field, and we support both to reproduce each reference exactly:
  - "merges" (Hugging Face, GPT-2's vocab.bpe, our own trainer): the rank of the pair (a, b) in the
    ordered merge list; a pair that is not a listed merge never joins;
  - "ranks" (tiktoken): the rank of the *concatenated bytes* a+b in the vocabulary, whatever split
    produced them.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, Literal

import regex

from lmforge.tokenizer.base import MissCache, Tokenizer
from lmforge.tokenizer.patterns import GPT2_PATTERN, PATTERNS

MergeMode = Literal["merges", "ranks"]
_NONE = 1 << 62  # "no merge" rank: larger than any real rank


def compile_pretokenizer(pattern: str | Sequence[str]) -> list[regex.Pattern]:
    """One or more regexes applied in sequence (a single string is the common case)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns:
        raise ValueError("a pre-tokenizer needs at least one pattern")
    try:
        return [regex.compile(p) for p in patterns]
    except regex.error as e:
        raise ValueError(f"invalid pre-tokenizer pattern: {e}") from e


def pretokenize(text: str, compiled: list[regex.Pattern]) -> list[str]:
    """Cut text into pieces. Each pattern cuts the pieces the one before it produced (llama.cpp order).

    A pattern keeps what it matched *and* the gaps between its matches, the way Hugging Face's
    Split(behavior="isolated") and llama.cpp's regex_exprs do, so no character is ever dropped.
    """
    pieces = [text]
    for pat in compiled:
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for m in pat.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos : m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def merge_by_concat(parts: list, ranks: dict) -> list:
    """BPE's inner loop when a pair ranks as the symbol it would make (lower rank merges first).

    tiktoken ranks byte strings this way; SentencePiece does too, with rank = -score. Merge the
    best-ranked adjacent pair (the leftmost on ties) until no adjacent pair makes a known symbol.
    A merge changes only the two pairs next to it, so the rank list is patched, not rebuilt.
    """
    get = ranks.get
    pair_ranks = [get(a + b, _NONE) for a, b in zip(parts, parts[1:])]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NONE:
            break
        i = pair_ranks.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + parts[i], _NONE)
        if i < len(pair_ranks):
            pair_ranks[i] = get(parts[i] + parts[i + 1], _NONE)
    return parts


def merge_heap(parts: list, rank_of: Callable[[Any, Any], Any]) -> list:
    """The same merges in O(n log n): a heap of (rank, position) over a doubly linked list.

    For long pieces, where the loops above are quadratic (a 10,000-space run would take 10^8 steps).
    rank_of(a, b) gives the pair's rank or None. Ties go to the leftmost pair, as in the loops.
    """
    n = len(parts)
    parts = list(parts)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    heap: list = []

    def push(i: int) -> None:
        if i >= 0 and nxt[i] < n:
            r = rank_of(parts[i], parts[nxt[i]])
            if r is not None:
                heapq.heappush(heap, (r, i, parts[i], parts[nxt[i]]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, a, b = heapq.heappop(heap)
        j = nxt[i] if parts[i] is not None else n
        if j >= n or parts[i] != a or parts[j] != b:
            continue  # stale: one side was merged since this entry was pushed
        parts[i], parts[j] = a + b, None
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        push(prv[i])
        push(i)
    return [p for p in parts if p is not None]


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer.

    vocab: id → token bytes. merges: (left bytes, right bytes) in merge order (rank = position).
    special_tokens: strings matched verbatim before pre-tokenization; a list (ids looked up in the vocab,
    or appended after it) or a dict str → id.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]] | None,
        special_tokens: Iterable[str] | dict[str, int] | None = None,
        pattern: str | Sequence[str] = GPT2_PATTERN,
        *,
        merge_mode: MergeMode = "merges",
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        ignore_merges: bool = False,
        name: str | None = None,
        cache_size: int = 1 << 18,
    ):
        if merge_mode not in ("merges", "ranks"):
            raise ValueError(f"merge_mode must be 'merges' or 'ranks', got {merge_mode!r}")
        if merge_mode == "merges" and merges is None:
            raise ValueError("merge_mode='merges' needs a merges list")
        self.vocab = dict(vocab)
        self.pattern = pattern
        self.merge_mode = merge_mode
        self.ignore_merges = ignore_merges  # Llama 3: a piece that is a whole token is never split
        self.name = name
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos, self.add_eos = add_bos, add_eos
        self._pretok = compile_pretokenizer(pattern)
        # Fast path: our known single patterns match every character, so findall (one C call) loses
        # nothing; any other pattern goes through pretokenize(), which keeps the gaps.
        self._single = (
            self._pretok[0].findall if isinstance(pattern, str) and pattern in PATTERNS.values() else None
        )

        # bytes → id. Several ids may share bytes (special tokens that are also plain text): keep the first.
        self._ids: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            self._ids.setdefault(self.vocab[i], i)
        # A few real vocabularies (SmolLM2) lack some rare control bytes. Hugging Face drops such bytes
        # when there is no unk token; we do the same, so these bytes do not survive a round trip.
        self.missing_bytes = [b for b in range(256) if bytes([b]) not in self._ids]

        self._merges = None if merges is None else [(bytes(a), bytes(b)) for a, b in merges]
        if self._merges is not None:
            self._pair_rank: dict[tuple[bytes, bytes], int] = {}
            # The same table keyed by id_a * width + id_b, with the id each merge produces.
            self._width = max(self.vocab) + 2  # > every id, so keys of (id, -1) never collide
            self._pair_table: dict[int, int] = {}
            self._merge_ids: list[int] = []
            for rank, (a, b) in enumerate(self._merges):
                if a not in self._ids or b not in self._ids or a + b not in self._ids:
                    raise ValueError(
                        f"merge #{rank} ({a!r}, {b!r}) references a token that is not in the vocabulary"
                    )
                self._pair_rank.setdefault((a, b), rank)
                self._pair_table.setdefault(self._ids[a] * self._width + self._ids[b], rank)
                self._merge_ids.append(self._ids[a + b])
            self._byte_ids = [self._ids.get(bytes([b]), -1) for b in range(256)]  # -1: a missing byte

        self.special_tokens: dict[str, int] = {}
        if isinstance(special_tokens, dict):
            self.special_tokens = dict(special_tokens)
            for tok, i in self.special_tokens.items():
                self.vocab.setdefault(i, tok.encode("utf-8"))
        elif special_tokens:
            next_id = max(self.vocab) + 1
            for tok in special_tokens:
                # A special token already in the vocab as a whole-token string keeps that id.
                i = self._ids.get(tok.encode("utf-8"))
                if i is None or len(tok.encode("utf-8")) == 1:
                    i, next_id = next_id, next_id + 1
                    self.vocab[i] = tok.encode("utf-8")
                self.special_tokens[tok] = i
        self._special_re = None
        if self.special_tokens:
            # Longest first: with "<|a|>" and "<|a|>b" both special, the longer one wins.
            alts = sorted(self.special_tokens, key=len, reverse=True)
            self._special_re = regex.compile("(" + "|".join(regex.escape(s) for s in alts) + ")")
        self._cache = MissCache(self._bpe, cache_size)

    # ------------------------------------------------------------------ BPE on one piece
    def _rank(self, a: bytes, b: bytes) -> int | None:
        if self.merge_mode == "merges":
            return self._pair_rank.get((a, b))
        return self._ids.get(a + b)

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """BPE-encode one pre-token. Short pieces: the plain quadratic loop; long ones: a heap."""
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (from broken UTF-16) cannot be UTF-8: join valid pairs, replace the rest
            # with U+FFFD, as tiktoken does.
            data = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
        ids = self._ids
        if (self.merge_mode == "ranks" or self.ignore_merges) and data in ids:
            # tiktoken's shortcut (with rank merges a whole token is always reached) and HF's ignore_merges.
            return (ids[data],)
        if len(data) > 64:
            return self._to_ids(merge_heap([data[i : i + 1] for i in range(len(data))], self._rank))
        if self.merge_mode == "merges":
            # Work on ids, with a pair keyed by one integer (faster than hashing tuples of bytes), and
            # keep the list of pair ranks up to date: a merge changes only its two neighbouring pairs.
            parts = [self._byte_ids[b] for b in data]
            get, width, new_id = self._pair_table.get, self._width, self._merge_ids
            ranks = [get(a * width + b, _NONE) for a, b in zip(parts, parts[1:])]
            while ranks:
                best = min(ranks)
                if best == _NONE:
                    break
                i = ranks.index(best)  # leftmost of the best-ranked pairs
                parts[i : i + 2] = [new_id[best]]
                del ranks[i]
                if i > 0:
                    ranks[i - 1] = get(parts[i - 1] * width + parts[i], _NONE)
                if i < len(ranks):
                    ranks[i] = get(parts[i] * width + parts[i + 1], _NONE)
            return tuple(p for p in parts if p >= 0) if self.missing_bytes else tuple(parts)
        # Rank mode (tiktoken): a pair's rank is the rank of its concatenated bytes.
        return self._to_ids(merge_by_concat([data[i : i + 1] for i in range(len(data))], ids))

    def _to_ids(self, parts: list[bytes]) -> tuple[int, ...]:
        ids = self._ids
        if self.missing_bytes:
            return tuple(ids[p] for p in parts if p in ids)
        return tuple(ids[p] for p in parts)

    # ------------------------------------------------------------------ public API
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling (special-token text is ordinary text)."""
        pieces = self._single(text) if self._single is not None else pretokenize(text, self._pretok)
        # map() + chain() keep the loop in C; only cache misses run Python (the BPE above).
        return list(chain.from_iterable(map(self._cache.__getitem__, pieces)))

    def encode(self, text: str, allow_special: bool = True, add_special_tokens: bool = False) -> list[int]:
        """Text → ids. allow_special=False encodes "<|endoftext|>" as the plain characters it is made of.

        add_special_tokens adds BOS/EOS when the tokenizer's file asks for them (Hugging Face semantics).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if not allow_special or self._special_re is None:
            ids = self.encode_ordinary(text)
        else:
            ids = []
            special = self.special_tokens
            for k, chunk in enumerate(self._special_re.split(text)):
                if k % 2:  # split() with a capture group: odd entries are the special tokens
                    ids.append(special[chunk])
                elif chunk:
                    ids.extend(self.encode_ordinary(chunk))
        if add_special_tokens:
            if self.add_bos and self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: list[str], num_workers: int | None = 1, **kwargs: Any) -> list[list[int]]:
        """Encode many texts; num_workers > 1 (or None: all cores) spreads large batches over processes."""
        workers = os.cpu_count() or 1 if num_workers is None else num_workers
        if workers <= 1 or len(texts) < 2 or sum(map(len, texts)) < 1 << 20:
            return [self.encode(t, **kwargs) for t in texts]
        import multiprocessing as mp

        global _WORKER_TOKENIZER
        _WORKER_TOKENIZER = self  # fork shares it copy-on-write; nothing is pickled per task
        step = max(1, len(texts) // (workers * 4))
        chunks = [texts[i : i + step] for i in range(0, len(texts), step)]
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool:
            results = pool.starmap(_encode_chunk, [(c, kwargs) for c in chunks])
        return [ids for part in results for ids in part]

    def encode_iterable(self, lines: Iterable[str], allow_special: bool = True) -> Iterator[int]:
        """Lazily encode a stream of text (e.g. an open file) with bounded memory.

        Yields exactly the ids of encode("".join(lines)): the last two pieces of each chunk are held
        back, because text that arrives next could still extend them (a word, a whitespace run).
        """
        carry = ""
        for line in lines:
            carry += line
            if len(carry) < 1 << 16 and "\n" not in line:
                continue
            head, carry = self._split_safe(carry, allow_special)
            if head:
                yield from self.encode(head, allow_special=allow_special)
        if carry:
            yield from self.encode(carry, allow_special=allow_special)

    def _split_safe(self, text: str, allow_special: bool) -> tuple[str, str]:
        """Split text into (prefix that no later text can change, tail to carry over)."""
        start, end = 0, len(text)  # the pieces we look at: text[start:end]
        if allow_special and self._special_re is not None:
            # A special token may be cut at the chunk end: hold back its length in characters.
            end = max(0, end - max(map(len, self.special_tokens)))
            for m in self._special_re.finditer(text):
                if m.end() <= end:
                    start = m.end()  # right after a special token is always a safe cut
                elif m.start() < end:
                    end = m.start()
                    break
        pieces = pretokenize(text[start:end], self._pretok)
        if len(pieces) <= 2:
            return text[:start], text[start:]
        cut = end - len(pieces[-1]) - len(pieces[-2])
        return text[:cut], text[cut:]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        vocab = self.vocab
        try:
            return b"".join(map(vocab.__getitem__, ids))
        except KeyError as e:
            raise ValueError(
                f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. Byte sequences that are not valid UTF-8 become U+FFFD; decode never raises on them."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The ordered merge list; for rank-based (tiktoken) vocabularies it is recovered on first use."""
        if self._merges is None:
            self._merges = recover_merges(self.vocab, self.special_tokens)
        return self._merges

    def save(self, path: str | os.PathLike, format: str = "lmforge") -> None:
        from lmforge.tokenizer.formats import save_tokenizer

        save_tokenizer(self, path, format=format)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> BPETokenizer:
        """Load from our format, tokenizer.json, GPT-2 encoder.json + vocab.bpe, a .tiktoken file or GGUF."""
        from lmforge.tokenizer.formats import load_bpe

        return load_bpe(path, **kwargs)

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, specials={len(self.special_tokens)})"


_WORKER_TOKENIZER: BPETokenizer | None = None


def _encode_chunk(texts: list[str], kwargs: dict) -> list[list[int]]:
    return [_WORKER_TOKENIZER.encode(t, **kwargs) for t in texts]


def recover_merges(
    vocab: dict[int, bytes], special_tokens: dict[str, int] | None = None
) -> list[tuple[bytes, bytes]]:
    """Merges of a rank-ordered vocabulary (tiktoken files list tokens, not merges).

    Token t of rank r was made by the last merge of BPE run on t's own bytes using only ranks below r,
    which leaves exactly two parts: those are its merge.
    """
    special = set((special_tokens or {}).values())
    ranks = {b: i for i, b in vocab.items() if i not in special}
    merges: list[tuple[bytes, bytes]] = []
    for rank in sorted(i for i in vocab if i not in special):
        token = vocab[rank]
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_i = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges
