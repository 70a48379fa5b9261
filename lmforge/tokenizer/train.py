"""Training a byte-level BPE tokenizer (Sennrich et al. 2016; Radford et al. 2019).

The algorithm, in the field's reference semantics:
  1. the vocabulary starts as the special tokens plus the 256 byte values;
  2. the corpus is cut at special tokens (they are never merged across), each part is pre-tokenized
     with the regex, and we count how often every pre-token ("word") occurs;
  3. repeat until the vocabulary is full: find the most frequent pair of adjacent tokens inside the
     words (ties: the lexicographically greatest pair of byte strings), add their concatenation as a
     new token, and replace the pair by it everywhere.

Done naively, step 3 recounts every pair of every word per merge: O(merges × corpus). Here it is
incremental, as in Hugging Face's trainer: pair counts are computed once, an index remembers which
words contain each pair, and a merge only touches those words, adjusting the counts of the pairs it
destroys and creates. A heap finds the best pair; entries go stale when counts drop and are fixed
lazily when they reach the top. Step 2 reads the file in chunks cut at safe boundaries and
pre-tokenizes them in parallel processes, so the corpus never has to fit in memory as one string.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import regex

from lmforge.tokenizer.bpe import compile_pretokenizer, pretokenize
from lmforge.tokenizer.patterns import GPT2_PATTERN, PATTERNS

CHUNK_BYTES = 16 << 20  # at most this much text in memory per task
_KNOWN = {p for p in PATTERNS.values()}
# Inverting bytes (c → 255 - c) turns Python's ascending string order into descending byte order.
_INVERT = {i: chr(255 - i) for i in range(256)}
_END = "\u0100"  # sorts after every inverted byte: a longer string with the same prefix comes first


def _inverted(token: bytes) -> str:
    """A string whose ascending order is the *descending* order of byte strings.

    For a pair, inverted(a) + inverted(b) sorts the pairs (a, b) in descending order: the end marker
    makes a shorter prefix sort after its extensions, as it must when reversed.
    """
    return token.decode("latin-1").translate(_INVERT) + _END


def _apply_merge(
    words: list[list[int]],
    counts: list[int],
    idxs: Iterable[int],
    a: int,
    b: int,
    new: int,
    pair_counts: defaultdict[tuple[int, int], int],
    where: defaultdict[tuple[int, int], set[int]],
) -> dict[tuple[int, int], None]:
    """Replace every (a, b) by `new` in the words idxs, left to right, fixing pair counts locally.

    Only the neighbours of a merged position change: (left, a) becomes (left, new) and (b, right)
    becomes (new, right). The pair (a, b) itself is dropped by the caller. Returns the pairs that
    gained counts (all contain `new`), in a dict used as an ordered set.
    """
    touched: dict[tuple[int, int], None] = {}
    for idx in idxs:
        w = words[idx]
        n = len(w)
        c = counts[idx]
        out: list[int] = []
        i = 0
        merged_end = -1  # position right after the previous merge in this word
        remaining = w.count(a)  # counting first spares the ValueError that ends an index() search
        while remaining:
            j = w.index(a, i)  # jump to the next candidate in C, not element by element
            remaining -= 1
            if j + 1 >= n:
                break
            if w[j + 1] != b:
                out.extend(w[i : j + 1])
                i = j + 1
                continue
            if a == b:
                remaining -= 1  # the b consumed here was also an a
            out.extend(w[i:j])
            gained = []
            if j > 0:
                if j == merged_end:
                    # two merges side by side: (b, a) was removed by the previous one's right side
                    gained.append((new, new))
                else:
                    left = w[j - 1]
                    pair_counts[(left, a)] -= c
                    gained.append((left, new))
            if j + 2 < n:
                right = w[j + 2]
                pair_counts[(b, right)] -= c
                if not (right == a and j + 3 < n and w[j + 3] == b):  # else the next merge adds (new, new)
                    gained.append((new, right))
            for p in gained:
                pair_counts[p] += c
                touched[p] = None
                where[p].add(idx)
            out.append(new)
            i = merged_end = j + 2
        if merged_end >= 0:  # else the index was stale: this word lost the pair in an earlier merge
            out.extend(w[i:])
            words[idx] = out
    return touched


# ---------------------------------------------------------------------- step 2: count pre-tokens
def _special_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    specials = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None


def count_pretokens(text: str, pattern: str | tuple[str, ...], special_tokens: Iterable[str] = ()) -> Counter:
    """Count pre-tokens in text after removing special tokens (nothing is merged across them)."""
    compiled = compile_pretokenizer(pattern)
    findall = compiled[0].findall if isinstance(pattern, str) and pattern in _KNOWN else None
    special = _special_regex(special_tokens)
    counts: Counter = Counter()
    for part in special.split(text) if special else [text]:
        counts.update(findall(part) if findall else pretokenize(part, compiled))
    return counts


def _safe_boundary(f, start: int, end: int, special_tokens: list[str]) -> int:
    """First offset ≥ start where the text can be cut without changing its pre-tokens.

    Safe cuts: the start of a special token, or a space that follows a non-space ASCII byte and precedes
    an ASCII letter (" word"): no piece of the built-in patterns spans it, and the lookaheads of the
    pieces before it only ever look at whitespace.
    """
    specials = [s.encode("utf-8") for s in special_tokens]
    longest = max(map(len, specials), default=0)
    pos = start
    while pos < end:
        base = max(0, pos - longest)  # read a little before pos to see special tokens that cover it
        f.seek(base)
        block = f.read(pos - base + (1 << 16) + longest + 2)
        rel = pos - base
        candidates = [j for j in (block.find(s, rel) for s in specials) if j >= 0]
        for m in _SAFE.finditer(block, rel):
            cut = m.start() + 1
            if not any(_covers(block, s, cut) for s in specials):
                candidates.append(cut)
                break
        if candidates:
            return min(base + min(candidates), end)
        pos += 1 << 16
    return end


_SAFE = regex.compile(rb"[!-~] [A-Za-z]")


def _covers(block: bytes, token: bytes, cut: int) -> bool:
    """Does an occurrence of token in block strictly contain the cut position?"""
    i = block.find(token, max(0, cut - len(token) + 1))
    return i != -1 and i < cut < i + len(token)


def _chunk_ranges(path: Path, n_chunks: int, special_tokens: list[str], pattern) -> list[tuple[int, int]]:
    size = path.stat().st_size
    if n_chunks <= 1 or size == 0 or not (isinstance(pattern, str | tuple) and _all_known(pattern)):
        return [(0, size)]
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, n_chunks):
            cut = _safe_boundary(f, max(k * size // n_chunks, cuts[-1]), size, special_tokens)
            if cut > cuts[-1]:
                cuts.append(cut)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _all_known(pattern) -> bool:
    stages = [pattern] if isinstance(pattern, str) else list(pattern)
    return all(s in _KNOWN or s == r"\p{N}" or s in PATTERNS.get("smollm", ()) for s in stages)


def _count_range(path: str, start: int, end: int, pattern, special_tokens: list[str]) -> Counter:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    # Bytes that are not UTF-8 survive as lone surrogates and come back out unchanged below.
    return count_pretokens(data.decode("utf-8", errors="surrogateescape"), pattern, special_tokens)


def count_file(
    path: str | os.PathLike,
    pattern=GPT2_PATTERN,
    special_tokens: Iterable[str] = (),
    num_workers: int | None = None,
) -> Counter:
    """Pre-token counts of a whole file, in parallel chunks of at most CHUNK_BYTES."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training corpus not found: {path}")
    special_tokens = list(special_tokens)
    size = path.stat().st_size
    workers = (os.cpu_count() or 1) if num_workers is None else max(1, num_workers)
    if size < 1 << 20:
        workers = 1  # forking costs more than it saves on a small file
    n_chunks = max(workers if workers > 1 else 1, -(-size // CHUNK_BYTES))
    ranges = _chunk_ranges(path, n_chunks, special_tokens, pattern)
    try:
        if workers == 1 or len(ranges) == 1:
            total: Counter = Counter()
            for a, b in ranges:
                total.update(_count_range(str(path), a, b, pattern, special_tokens))
            return total
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, len(ranges))) as pool:
            parts = pool.starmap(
                _count_range, [(str(path), a, b, pattern, special_tokens) for a, b in ranges]
            )
    except OSError as e:
        raise ValueError(f"could not read training corpus {path}: {e}") from e
    total = parts[0]
    for c in parts[1:]:
        total.update(c)
    return total


# ---------------------------------------------------------------------- step 3: merges
def merge_counts(
    word_counts: dict[bytes, int],
    vocab_size: int,
    special_tokens: list[str] = (),
    progress: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Learn merges from {word bytes: count}. Returns (vocab id → bytes, merges in order)."""
    special_tokens = list(dict.fromkeys(special_tokens))
    vocab: dict[int, bytes] = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    offset = len(vocab)
    for b in range(256):
        vocab[offset + b] = bytes([b])
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the base alphabet: 256 bytes + {len(special_tokens)} special tokens"
        )
    token_bytes = [b""] * offset + [bytes([b]) for b in range(256)]

    words: list[list[int]] = []
    counts: list[int] = []
    for w, c in word_counts.items():
        if len(w) > 1:  # a one-byte word has no pairs
            words.append([offset + x for x in w])
            counts.append(c)

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair → words that (may) contain it
    for idx, (w, c) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += c
            where[pair].add(idx)
    # Tie-break keys: each token's inverted string is computed once, a pair's key is two of them joined.
    inv = [_inverted(t) for t in token_bytes]
    heap = [(-c, inv[a] + inv[b], (a, b)) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    n_merges = vocab_size - len(vocab)
    bar = _progress(n_merges, progress)
    while len(merges) < n_merges and heap:
        neg, key, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current <= 0:
            continue
        if current != -neg:  # stale: the count dropped since this entry was pushed
            heapq.heappush(heap, (-current, key, pair))
            continue
        a, b = pair
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        inv.append(_inverted(token_bytes[new]))
        merges.append((token_bytes[a], token_bytes[b]))
        vocab[new] = token_bytes[new]
        touched = _apply_merge(words, counts, where.pop(pair), a, b, new, pair_counts, where)
        pair_counts.pop(pair, None)
        for p in touched:  # only pairs with the new token can have grown: push their fresh counts
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, inv[p[0]] + inv[p[1]], p))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return vocab, merges


def _progress(total: int, progress: bool | None):
    if progress is False or total < 2000:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="bpe merges",
        unit="merge",
        disable=None if progress is None else False,
        mininterval=0.5,
    )


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Iterable[str] = (),
    pattern: str | tuple[str, ...] = GPT2_PATTERN,
    num_workers: int | None = None,
    progress: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on a text file. Returns (vocab: id → bytes, merges in merge order).

    Ids: special tokens first (0..k-1), then the 256 bytes, then one id per merge.
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the base alphabet: 256 bytes + {len(special_tokens)} special tokens"
        )
    counts = count_file(input_path, pattern, special_tokens, num_workers)
    word_counts: dict[bytes, int] = {}
    for piece, c in counts.items():
        w = piece.encode("utf-8", errors="surrogateescape")
        word_counts[w] = word_counts.get(w, 0) + c
    return merge_counts(word_counts, vocab_size, special_tokens, progress)
