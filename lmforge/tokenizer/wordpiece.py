"""WordPiece: the tokenizer of BERT and its descendants (MiniLM, DistilBERT, all-MiniLM-L6-v2, ...).

WordPiece (Schuster & Nakajima 2012; Wu et al. 2016, "Google's Neural Machine Translation System")
splits each word into pieces from a fixed vocabulary, and BERT (Devlin et al. 2018) made it famous.
Unlike BPE there are no merge rules at encoding time: the vocabulary alone decides. A word is cut
greedily, longest match first: take the longest vocabulary entry that starts the word, then the
longest entry (written with a "##" prefix, meaning "continues a word") that starts the rest, and so
on. If some position matches nothing, the *whole* word becomes [UNK].

    "tokenization" → token ##ization      "unaffable" → una ##ffa ##ble      (BERT's uncased vocabulary)

Before that, BERT's "basic tokenizer" turns raw text into words. We reproduce Hugging Face's
BertNormalizer + BertPreTokenizer (the Rust `tokenizers` library, which is what transformers runs):
  1. clean: drop U+0000, U+FFFD and control/format characters (Unicode Cc, Cf, Co, Cs, except tab
     and newlines), turn every whitespace character into a plain space;
  2. put spaces around CJK ideographs, so each one becomes its own word;
  3. when lower-casing (and strip_accents is not False): NFD-decompose, drop nonspacing marks (Mn),
     so "café" → "cafe";
  4. lower-case, one character at a time (no final-sigma rule: "ΟΔΟΣ" → "οδοσ", as Rust does it);
  5. split on whitespace, and make every punctuation character a word of its own (ASCII symbols
     such as "$" and "^" count as punctuation too, on top of Unicode's P* categories).
Special tokens written in the text ("[CLS]", "[MASK]", ...) are cut out before all of this and map
straight to their ids, as they do in Hugging Face.

Speed: every step above is a per-character function, so each one is a `str.translate` through a
table that fills itself the first time it sees a character; WordPiece runs once per distinct word
(a dict cache), so a MB of text encodes in well under a second of pure Python.

Exactness: ids equal Hugging Face's on every text we have tried, and on every character Unicode 3.2
already had, bar four whose category changed since (U+166D, U+1734, U+1885, U+1886). Characters
added in recent Unicode versions can differ: we classify them with Python's `unicodedata`, while
`tokenizers` compiles in older category tables (it sees e.g. the new Mn marks as plain letters).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lmforge.fileio import read_json
from lmforge.tokenizer.base import Tokenizer

PathLike = str | os.PathLike
Padding = bool | Literal["longest", "max_length", "do_not_pad"]
Truncation = bool | Literal["longest_first", "only_first", "only_second", "do_not_truncate"] | None

# CJK ideograph blocks, as in Hugging Face tokenizers' BertNormalizer. (Google's original Python and
# transformers' slow tokenizer start the Extension E range at 0x2B820; the Rust code, which is what
# everyone runs today, starts it at 0x2B920. We follow the Rust code.)
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
# Unicode's White_Space property (Rust's char::is_whitespace). Python's str.isspace also says yes to
# U+001C..U+001F, which BERT treats as control characters, so we spell the set out.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
)
# Control/format/private-use/surrogate. Not Cn (unassigned): Hugging Face keeps those.
_CONTROL_CATEGORIES = frozenset(("Cc", "Cf", "Co", "Cs"))
_VERY_LARGE = 10**12  # a model_max_length above this means "no limit" (transformers writes 1e30)
_SPECIAL_NAMES = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_control(c: str) -> bool:
    # Tab and newlines are technically Cc, but BERT treats them as whitespace.
    return c not in "\t\n\r" and unicodedata.category(c) in _CONTROL_CATEGORIES


def _is_punctuation(c: str) -> bool:
    # All non-letter/number ASCII ("$", "+", "^", "`", ...) splits like punctuation even though Unicode
    # files several of them under symbols (S*): BERT wants "$5" → "$", "5".
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


class _CharMap(dict):
    """A `str.translate` table that computes a character's replacement the first time it is seen.

    Real text uses a few hundred distinct characters, so after warm-up every step of the basic
    tokenizer is one C-speed translate call instead of a Python loop over characters.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[str], str]):
        super().__init__()
        self.fn = fn

    def __missing__(self, cp: int) -> str:
        out = self[cp] = self.fn(chr(cp))
        return out


@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in the text before normalization (Hugging Face's `added_tokens`)."""

    content: str
    id: int
    special: bool = True  # special tokens are skipped by decode(skip_special_tokens=True)
    single_word: bool = False  # only match when not inside a word
    lstrip: bool = False  # also swallow the whitespace on its left
    rstrip: bool = False  # ... and on its right
    normalized: bool = False  # match in the normalized (e.g. lower-cased) text instead of the raw text


class WordPieceTokenizer(Tokenizer):
    """BERT's tokenizer: basic tokenization (clean, CJK, lower-case, accents, punctuation) + WordPiece.

    vocab: token → id, or the list of tokens in id order (the lines of vocab.txt).
    strip_accents: None follows do_lower_case (BERT's convention); True/False force it.
    added_tokens: tokens cut out of the raw text first (by default the five named special tokens).
    """

    # What tokenizer.json asks for by default (all-MiniLM: truncate and pad to 128). Informational:
    # like transformers we truncate and pad only when a call asks for it.
    default_truncation: dict[str, Any] | None = None
    default_padding: dict[str, Any] | None = None

    def __init__(
        self,
        vocab: dict[str, int] | Sequence[str],
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str | None = "[CLS]",
        sep_token: str | None = "[SEP]",
        pad_token: str | None = "[PAD]",
        mask_token: str | None = "[MASK]",
        max_input_chars_per_word: int = 100,
        continuing_subword_prefix: str = "##",
        model_max_length: int | None = 512,
        *,
        clean_text: bool = True,
        added_tokens: Iterable[AddedToken] | None = None,
        decoder_cleanup: bool = True,
        cache_size: int = 1 << 18,
    ):
        self.token_ids: dict[str, int] = _check_vocab(vocab)
        if unk_token not in self.token_ids:
            raise ValueError(f"the unknown token {unk_token!r} is not in the vocabulary")
        if max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be >= 1, got {max_input_chars_per_word}")
        if not continuing_subword_prefix:
            raise ValueError("continuing_subword_prefix must not be empty")
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.clean_text = clean_text
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.max_input_chars_per_word = max_input_chars_per_word
        self.prefix = continuing_subword_prefix
        self.model_max_length = model_max_length
        self.decoder_cleanup = decoder_cleanup
        self.unk_id = self.token_ids[unk_token]

        # Added tokens: by default the named special tokens that the vocabulary has (as transformers'
        # BertTokenizer does). Their ids may lie past the vocabulary (tokens added after training).
        if added_tokens is None:
            named = (unk_token, cls_token, sep_token, pad_token, mask_token)
            added_tokens = [AddedToken(t, self.token_ids[t]) for t in named if t and t in self.token_ids]
        self.added_tokens: list[AddedToken] = list(added_tokens)
        self.vocab = {i: t.encode("utf-8") for t, i in self.token_ids.items()}
        self._id_to_token = {i: t for t, i in self.token_ids.items()}
        for k, at in enumerate(self.added_tokens):
            if not at.content:
                raise ValueError(f"added token with id {at.id} has empty content")
            if self.token_ids.get(at.content, at.id) != at.id:
                # A token the vocabulary already has keeps its vocabulary id (Hugging Face does the same).
                at = self.added_tokens[k] = replace(at, id=self.token_ids[at.content])
            known = self._id_to_token.get(at.id)
            if known is not None and known != at.content:
                raise ValueError(
                    f"added token {at.content!r} has id {at.id}, which is {known!r} in the vocabulary"
                )
            self._id_to_token[at.id] = at.content
            self.vocab[at.id] = at.content.encode("utf-8")
        self.special_tokens = {at.content: at.id for at in self.added_tokens if at.special}
        for t in (unk_token, cls_token, sep_token, pad_token, mask_token):
            if t and t in self.token_ids:
                self.special_tokens.setdefault(t, self.token_ids[t])
        self._special_ids = frozenset(self.special_tokens.values())
        self._added_ids = {at.content: at.id for at in self.added_tokens}

        # The basic tokenizer as translate tables (see _CharMap); they depend on the options only.
        self._prep = _CharMap(self._prep_char)
        self._fold = _CharMap(self._fold_char)
        self._split = _CharMap(_split_char)
        self._fold_split = _CharMap(lambda c: "".join(_split_char(x) for x in self._fold_char(c)))

        # Added tokens are found in the raw text, or (normalized=True) in the normalized text.
        self._raw_split = _added_token_regex([a for a in self.added_tokens if not a.normalized])
        self._norm_ids = {self.normalize(a.content): a.id for a in self.added_tokens if a.normalized}
        self._norm_split = _added_token_regex([AddedToken(t, i) for t, i in self._norm_ids.items()])
        # No vocabulary token is longer than this, so the greedy search never tries longer substrings.
        self._max_piece = max(len(t) for t in self.token_ids)
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size

    # ------------------------------------------------------------------ basic tokenizer
    def _prep_char(self, c: str) -> str:
        """Steps 1-2 for one character: clean it and pad CJK ideographs with spaces."""
        if self.clean_text:
            if c == "\x00" or c == "\ufffd" or _is_control(c):
                return ""
            if c in _WHITESPACE:
                return " "
        if self.tokenize_chinese_chars and _is_cjk(c):
            return f" {c} "
        return c

    def _fold_char(self, c: str) -> str:
        """Steps 3-4 for one (already NFD-decomposed) character: drop accents, lower-case."""
        if self.strip_accents and unicodedata.category(c) == "Mn":
            return ""
        # Lower-casing a single character never applies the final-sigma rule, matching Rust's
        # char::to_lowercase; str.lower() on the whole text would write "ς" at word ends.
        return c.lower() if self.do_lower_case else c

    def normalize(self, text: str) -> str:
        """BertNormalizer: the text that gets split into words (like `tokenizers`' normalize_str)."""
        text = text.translate(self._prep)
        if self.strip_accents and not text.isascii():
            text = unicodedata.normalize("NFD", text)
        return text.translate(self._fold)

    def _words(self, text: str) -> list[str]:
        """normalize() + BertPreTokenizer: whitespace-separated words, punctuation on its own."""
        text = text.translate(self._prep)
        if self.strip_accents and not text.isascii():
            # NFD needs the whole string (it reorders combining marks), so it cannot be per character.
            text = unicodedata.normalize("NFD", text)
        # Folding and punctuation splitting are both per character, so one table does both.
        return [w for w in text.translate(self._fold_split).split(" ") if w]

    # ------------------------------------------------------------------ WordPiece
    def _wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first: the longest vocabulary entry at each position, "##" after the first."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_id]
        vocab, prefix, longest = self.token_ids, self.prefix, self._max_piece
        ids: list[int] = []
        start, n = 0, len(word)
        while start < n:
            end = min(n, start + longest)
            while end > start:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                i = vocab.get(piece)
                if i is not None:
                    ids.append(i)
                    break
                end -= 1
            else:
                # Some position matched nothing: the whole word is unknown, not just that piece
                # (BERT's choice: a word half-spelled as pieces and half [UNK] would mislead the model).
                return [self.unk_id]
            start = end
        return ids

    def _encode_words(self, text: str) -> list[int]:
        cache = self._cache
        out: list[int] = []
        for word in self._words(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._wordpiece(word)
                if len(cache) >= self._cache_size:
                    cache.clear()  # keep memory bounded; real text refills it with the common words
                cache[word] = ids
            out += ids
        return out

    def _encode_normalized_parts(self, text: str) -> list[int]:
        """For added tokens with normalized=True: split the normalized text on them, then pre-tokenize."""
        out: list[int] = []
        for part, tid in _split_on(self._norm_split, self._norm_ids, self.normalize(text)):
            if tid is not None:
                out.append(tid)
                continue
            for word in part.translate(self._split).split(" "):
                if word:
                    out += self._wordpiece(word)
        return out

    def _encode_text(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        encode_part = self._encode_normalized_parts if self._norm_split else self._encode_words
        if self._raw_split is None:
            return encode_part(text)
        out: list[int] = []
        for part, tid in _split_on(self._raw_split, self._added_ids, text):
            if tid is not None:
                out.append(tid)
            elif part:
                out += encode_part(part)
        return out

    # ------------------------------------------------------------------ public API
    def tokenize(self, text: str) -> list[str]:
        """Text → token strings, without [CLS]/[SEP] ("tokenization" → ["token", "##ization"])."""
        return [self._id_to_token[i] for i in self._encode_text(text)]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self._token_of(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self._added_ids.get(t, self.token_ids.get(t, self.unk_id)) for t in tokens]

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        truncation: Truncation = None,
        max_length: int | None = None,
    ) -> list[int]:
        """[CLS] text [SEP] (text_pair [SEP]) as ids.

        truncation: None (the default) truncates only when max_length is given, as transformers does;
        True/"longest_first", "only_first", "only_second" as in Hugging Face; max_length counts the
        special tokens and defaults to model_max_length.
        """
        a = self._encode_text(text)
        b = None if text_pair is None else self._encode_text(text_pair)
        return self._build(a, b, add_special_tokens, truncation, max_length)[0]

    def _build(
        self,
        a: list[int],
        b: list[int] | None,
        add_special_tokens: bool,
        truncation: Truncation,
        max_length: int | None,
    ) -> tuple[list[int], list[int]]:
        """Truncate, then wrap in [CLS]/[SEP]: (input_ids, token_type_ids)."""
        strategy = _truncation_strategy(truncation, max_length)
        if strategy is not None:
            limit = max_length if max_length is not None else self.model_max_length
            if limit is not None:
                n_special = (3 if b is not None else 2) if add_special_tokens else 0
                a, b = _truncate(a, b, limit, n_special, strategy)
        if not add_special_tokens:
            ids = a + (b or [])
            return ids, [0] * len(a) + [1] * len(b or [])
        cls, sep = (
            self._special_id(self.cls_token, "cls_token"),
            self._special_id(self.sep_token, "sep_token"),
        )
        if b is None:
            return [cls, *a, sep], [0] * (len(a) + 2)
        return [cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)

    def _special_id(self, token: str | None, name: str) -> int:
        i = self.special_tokens.get(token) if token else None
        if i is None:
            raise ValueError(f"this tokenizer has no {name} in its vocabulary ({token!r})")
        return i

    def __call__(
        self,
        texts: str | list[str],
        text_pair: str | list[str] | None = None,
        padding: Padding = False,
        truncation: Truncation = None,
        max_length: int | None = None,
        return_tensors: Literal["pt", "np"] | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        """Batch encoding with the keys of transformers: input_ids, token_type_ids, attention_mask.

        A single str gives flat lists (or tensors of shape (1, n)); a list gives one row per text.
        padding: True/"longest" pads to the longest row, "max_length" to max_length (default
        model_max_length); pads go on the right with the [PAD] id, attention 0 and type id 0.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if text_pair is None:
            pairs: list[str | None] = [None] * len(batch)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if isinstance(text_pair, str) != single or len(pairs) != len(batch):
                raise ValueError(
                    f"got {len(batch)} texts but {len(pairs)} text pairs; pass one pair per text"
                )
        rows = [
            self._build(
                self._encode_text(t),
                None if p is None else self._encode_text(p),
                add_special_tokens,
                truncation,
                max_length,
            )
            for t, p in zip(batch, pairs, strict=True)
        ]
        input_ids = [ids for ids, _ in rows]
        type_ids = [types for _, types in rows]
        mask = [[1] * len(ids) for ids in input_ids]

        target = self._pad_length(padding, max_length, input_ids)
        if target is not None:
            pad = self._special_id(self.pad_token, "pad_token")
            for ids, types, m in zip(input_ids, type_ids, mask, strict=True):
                n = target - len(ids)
                if n > 0:
                    ids += [pad] * n
                    types += [0] * n
                    m += [0] * n

        out: dict[str, Any] = {"input_ids": input_ids, "token_type_ids": type_ids, "attention_mask": mask}
        if return_tensors is None:
            return {k: v[0] for k, v in out.items()} if single else out
        if len({len(r) for r in input_ids}) > 1:
            raise ValueError("rows have different lengths; pass padding=True to return tensors")
        if return_tensors == "pt":
            import torch  # only here: the tokenizer itself never needs torch

            return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        if return_tensors == "np":
            import numpy as np

            return {k: np.array(v, dtype=np.int64) for k, v in out.items()}
        raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")

    def _pad_length(self, padding: Padding, max_length: int | None, rows: list[list[int]]) -> int | None:
        if not padding or padding == "do_not_pad":
            return None
        if padding is True or padding == "longest":
            return max((len(r) for r in rows), default=0)
        if padding == "max_length":
            target = max_length if max_length is not None else self.model_max_length
            if target is None:
                raise ValueError(
                    "padding='max_length' needs max_length (this tokenizer has no model_max_length)"
                )
            return target
        raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")

    def _token_of(self, i: int) -> str:
        tok = self._id_to_token.get(i)
        if tok is None:
            raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        return tok

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids → text, as Hugging Face's WordPiece decoder: "##" pieces glue on, others get a space.

        With cleanup (the default), the space before . ? ! , and before contractions is removed
        token by token, exactly as `tokenizers` does it. Lower-casing and accent stripping are lost.
        """
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            # [UNK] is special too, so unknown words vanish from the text, as in Hugging Face.
            ids = [i for i in ids if i not in self._special_ids]
        return self.decode_tokens([self._token_of(i) for i in ids])

    def decode_tokens(self, tokens: Sequence[str]) -> str:
        """Token strings → text (the WordPiece decoder on its own; decode() maps ids to tokens first)."""
        prefix, out = self.prefix, []
        for k, tok in enumerate(tokens):
            if k > 0:  # a leading "##piece" stays as it is, as in Hugging Face
                tok = tok[len(prefix) :] if tok.startswith(prefix) else " " + tok
            out.append(_cleanup(tok) if self.decoder_cleanup else tok)
        return "".join(out)

    def __repr__(self) -> str:
        return (
            f"WordPieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"strip_accents={self.strip_accents}, model_max_length={self.model_max_length})"
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, path: PathLike) -> WordPieceTokenizer:
        """A Hugging Face BERT folder: vocab.txt and/or tokenizer.json, plus the config files if present."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        vocab_txt, tok_json = folder / "vocab.txt", folder / "tokenizer.json"
        if not vocab_txt.is_file() and not tok_json.is_file():
            raise FileNotFoundError(
                f"{folder} has neither vocab.txt nor tokenizer.json: not a WordPiece tokenizer"
            )
        config, special_map = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
        return cls.from_files(
            vocab_txt if vocab_txt.is_file() else None,
            tok_json if tok_json.is_file() else None,
            config if config.is_file() else None,
            special_tokens_map_json=special_map if special_map.is_file() else None,
        )

    @classmethod
    def from_files(
        cls,
        vocab_txt: PathLike | None = None,
        tokenizer_json: PathLike | None = None,
        tokenizer_config_json: PathLike | None = None,
        *,
        special_tokens_map_json: PathLike | None = None,
    ) -> WordPieceTokenizer:
        """Build from the files a BERT checkpoint ships. Later files override earlier ones:
        tokenizer.json (what `tokenizers` runs) < special_tokens_map.json < tokenizer_config.json
        (transformers re-applies do_lower_case & co. from the config over tokenizer.json).
        The settings stored for truncation/padding in tokenizer.json are kept in
        `default_truncation`/`default_padding` but not applied, as in transformers; without a
        tokenizer_config.json, model_max_length falls back to that truncation's max_length.
        """
        if vocab_txt is None and tokenizer_json is None:
            raise ValueError("need a vocab.txt or a tokenizer.json")
        kwargs: dict[str, Any] = {}
        vocab: list[str] | dict[str, int] | None = None
        source = str(vocab_txt or tokenizer_json)
        json_settings: dict[str, Any] = {}
        if tokenizer_json is not None:
            json_settings = _read_tokenizer_json(Path(tokenizer_json))
            vocab = json_settings.pop("vocab")
            kwargs.update(json_settings.pop("kwargs"))
        if vocab_txt is not None:
            txt_vocab = read_vocab_txt(vocab_txt)
            if vocab is not None and {t: i for i, t in enumerate(txt_vocab)} != vocab:
                raise ValueError(f"{vocab_txt} and {tokenizer_json} have different vocabularies")
            vocab = txt_vocab
        for extra in (special_tokens_map_json, tokenizer_config_json):
            if extra is not None:
                kwargs.update(_read_config(Path(extra), kwargs))
                source = f"{source} with {extra}"
        truncation_dflt = json_settings.get("truncation")
        if "model_max_length" not in kwargs and truncation_dflt:
            kwargs["model_max_length"] = truncation_dflt.get("max_length")
        try:
            tok = cls(vocab, **kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        tok.default_truncation = truncation_dflt
        tok.default_padding = json_settings.get("padding")
        return tok


def load_wordpiece(path: PathLike) -> WordPieceTokenizer:
    """A WordPiece tokenizer from a folder, a vocab.txt or a tokenizer.json whose model is WordPiece.

    A single file is read together with the tokenizer_config.json next to it, if there is one
    (it holds do_lower_case and model_max_length, which change the ids).
    """
    p = Path(path)
    if p.is_dir():
        return WordPieceTokenizer.from_dir(p)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or folder")
    config = p.parent / "tokenizer_config.json"
    config_arg = config if config.is_file() else None
    if p.suffix == ".json":
        return WordPieceTokenizer.from_files(None, p, config_arg)
    return WordPieceTokenizer.from_files(p, None, config_arg)


# ---------------------------------------------------------------------- helpers
def _split_char(c: str) -> str:
    """BertPreTokenizer for one character: whitespace separates, punctuation stands alone."""
    if c in _WHITESPACE:
        return " "
    if _is_punctuation(c):
        return f" {c} "
    return c


_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _cleanup(token: str) -> str:
    # Hugging Face's decoder cleanup, applied to one (space-prefixed) token at a time.
    if " " not in token:
        return token
    for dirty, clean in _CLEANUP:
        token = token.replace(dirty, clean)
    return token


def _added_token_regex(tokens: list[AddedToken]) -> re.Pattern | None:
    if not tokens:
        return None
    alts = []
    # Longest first, so that at one position the longest token wins (Hugging Face's leftmost-longest).
    for t in sorted(tokens, key=lambda t: len(t.content), reverse=True):
        pat = re.escape(t.content)
        if t.single_word:
            pat = rf"(?<!\w){pat}(?!\w)"
        # The group captures the content itself; lstrip/rstrip whitespace is matched around it and dropped.
        pat = ("\\s*" if t.lstrip else "") + f"({pat})" + ("\\s*" if t.rstrip else "")
        alts.append(pat)
    return re.compile("|".join(alts))


def _split_on(pattern: re.Pattern, ids: dict[str, int], text: str) -> list[tuple[str, int | None]]:
    """Cut text at the added tokens: [(text, None), (token, id), ...]."""
    out: list[tuple[str, int | None]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((text[pos : m.start()], None))
        content = next(g for g in m.groups() if g is not None)
        out.append((content, ids[content]))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def _truncation_strategy(truncation: Truncation, max_length: int | None) -> str | None:
    if truncation is None:
        # transformers: a max_length with no truncation argument means "longest_first".
        return "longest_first" if max_length is not None else None
    if truncation is False or truncation == "do_not_truncate":
        return None
    if truncation is True:
        return "longest_first"
    if truncation in ("longest_first", "only_first", "only_second"):
        return truncation
    raise ValueError(
        f"truncation must be True, False, 'longest_first', 'only_first' or 'only_second', got {truncation!r}"
    )


def _truncate(
    a: list[int], b: list[int] | None, max_length: int, n_special: int, strategy: str
) -> tuple[list[int], list[int] | None]:
    """Hugging Face's truncation (tokenizers/src/utils/truncation.rs), special tokens counted."""
    budget = max_length - n_special
    if budget < 0:
        # Hugging Face silently skips truncation here; returning more than max_length ids is a trap.
        raise ValueError(f"max_length={max_length} leaves no room for the {n_special} special tokens")
    total = len(a) + (len(b) if b is not None else 0)
    if total <= budget:
        return a, b
    if budget == 0:  # nothing fits: every strategy empties both sequences
        return [], None if b is None else []
    if strategy == "longest_first":
        if b is None:
            return a[:budget], None
        # Keep the shorter one whole if the longer alone can absorb the cut; else split the budget
        # evenly, the extra odd token going to the longer sequence.
        n1, n2 = len(a), len(b)
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > budget else max(n1, budget - n1)
        if n1 + n2 > budget:
            n1 = budget // 2
            n2 = n1 + budget % 2
        if swap:
            n1, n2 = n2, n1
        return a[:n1], b[:n2]
    to_remove = total - budget
    if strategy == "only_second" and b is None:
        raise ValueError("truncation='only_second' needs a text pair")
    target = a if strategy == "only_first" else b
    assert target is not None
    if len(target) <= to_remove:
        raise ValueError(
            f"truncation={strategy!r}: the sequence to truncate has {len(target)} tokens, "
            f"too short to remove the {to_remove} needed to fit max_length={max_length}"
        )
    cut = target[: len(target) - to_remove]
    return (cut, b) if strategy == "only_first" else (a, cut)


def _check_vocab(vocab: dict[str, int] | Sequence[str]) -> dict[str, int]:
    """token → id, refusing the mistakes that would silently shift ids."""
    if isinstance(vocab, dict):
        if not vocab:
            raise ValueError("the vocabulary is empty")
        seen: dict[int, str] = {}
        for tok, i in vocab.items():
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"vocabulary token {tok!r} is not a non-empty string")
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise ValueError(f"vocabulary id {i!r} of {tok!r} is not a non-negative int")
            if i in seen:
                raise ValueError(f"tokens {seen[i]!r} and {tok!r} share id {i}")
            seen[i] = tok
        return dict(vocab)
    if isinstance(vocab, str) or not isinstance(vocab, Sequence):
        raise TypeError(f"vocab must be a dict token → id or a list of tokens, got {type(vocab).__name__}")
    if not vocab:
        raise ValueError("the vocabulary is empty")
    ids: dict[str, int] = {}
    for i, tok in enumerate(vocab):
        if not isinstance(tok, str) or not tok:
            raise ValueError(f"vocabulary entry {i} ({tok!r}) is not a non-empty string")
        if tok in ids:
            raise ValueError(f"duplicate token {tok!r} at ids {ids[tok]} and {i}")
        ids[tok] = i
    return ids


def read_vocab_txt(path: PathLike) -> list[str]:
    """BERT's vocab.txt: one token per line, id = line number (from 0)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: vocabulary file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e})") from None
    lines = text.splitlines() if "\r" in text else text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise ValueError(f"{p}: the vocabulary is empty")
    seen: dict[str, int] = {}
    for i, tok in enumerate(lines):
        if not tok:
            raise ValueError(f"{p}: line {i + 1} is empty (every line must hold one token)")
        if tok in seen:
            raise ValueError(f"{p}: duplicate token {tok!r} on lines {seen[tok] + 1} and {i + 1}")
        seen[tok] = i
    return lines


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _read_tokenizer_json(path: Path) -> dict[str, Any]:
    """Settings of a Hugging Face tokenizer.json with a WordPiece model; anything else is refused."""
    data = _read_json(path)

    def fail(msg: str) -> ValueError:
        return ValueError(f"{path}: {msg}")

    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        kind = model.get("type") if isinstance(model, dict) else model
        raise fail(f"model.type is {kind!r}, not 'WordPiece'; this is not a WordPiece tokenizer")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise fail("model.vocab is missing or empty")
    kwargs: dict[str, Any] = {
        "unk_token": model.get("unk_token", "[UNK]"),
        "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
        "max_input_chars_per_word": model.get("max_input_chars_per_word", 100),
    }

    norm = data.get("normalizer")
    if norm is None:
        kwargs.update(
            clean_text=False, tokenize_chinese_chars=False, do_lower_case=False, strip_accents=False
        )
    elif norm.get("type") == "BertNormalizer":
        kwargs.update(
            clean_text=norm.get("clean_text", True),
            tokenize_chinese_chars=norm.get("handle_chinese_chars", True),
            do_lower_case=norm.get("lowercase", True),
            strip_accents=norm.get("strip_accents"),
        )
    else:
        raise fail(f"normalizer {norm.get('type')!r} is not supported (only BertNormalizer)")
    pre = data.get("pre_tokenizer")
    if not isinstance(pre, dict) or pre.get("type") != "BertPreTokenizer":
        kind = pre.get("type") if isinstance(pre, dict) else pre
        raise fail(f"pre_tokenizer {kind!r} is not supported (only BertPreTokenizer)")

    post = data.get("post_processor")
    if isinstance(post, dict) and post.get("type") == "BertProcessing":
        kwargs.update(cls_token=post["cls"][0], sep_token=post["sep"][0])
    elif isinstance(post, dict) and post.get("type") == "TemplateProcessing":
        cls_tok, sep_tok = _bert_template(post)
        if cls_tok is None:
            raise fail("post_processor template is not BERT's [CLS] $A [SEP] / [CLS] $A [SEP] $B [SEP]")
        kwargs.update(cls_token=cls_tok, sep_token=sep_tok)
    else:
        kind = post.get("type") if isinstance(post, dict) else post
        raise fail(f"post_processor {kind!r} is not supported (BertProcessing or a BERT template)")

    dec = data.get("decoder")
    if isinstance(dec, dict):
        if dec.get("type") != "WordPiece":
            raise fail(f"decoder {dec.get('type')!r} is not supported (only WordPiece)")
        if dec.get("prefix", "##") != kwargs["continuing_subword_prefix"]:
            raise fail("decoder.prefix differs from model.continuing_subword_prefix")
        kwargs["decoder_cleanup"] = dec.get("cleanup", True)

    added = []
    for entry in data.get("added_tokens") or []:
        try:
            added.append(
                AddedToken(
                    content=entry["content"],
                    id=int(entry["id"]),
                    special=bool(entry.get("special", False)),
                    single_word=bool(entry.get("single_word", False)),
                    lstrip=bool(entry.get("lstrip", False)),
                    rstrip=bool(entry.get("rstrip", False)),
                    normalized=bool(entry.get("normalized", False)),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise fail(f"malformed added_tokens entry {entry!r} ({e})") from None
    kwargs["added_tokens"] = added

    padding = data.get("padding")
    if isinstance(padding, dict) and padding.get("pad_token"):
        kwargs["pad_token"] = padding["pad_token"]
    truncation = data.get("truncation")
    if isinstance(truncation, dict):
        truncation = {"max_length": truncation.get("max_length"), "strategy": truncation.get("strategy")}
    return {"vocab": vocab, "kwargs": kwargs, "truncation": truncation, "padding": padding}


def _bert_template(post: dict[str, Any]) -> tuple[str | None, str | None]:
    """(cls, sep) if a TemplateProcessing is BERT's; (None, None) otherwise."""

    def parts(seq: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
        out = []
        for item in seq:
            ((kind, body),) = item.items()
            out.append((kind, body["id"], body.get("type_id", 0)))
        return out

    try:
        single, pair = parts(post["single"]), parts(post["pair"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, None
    if len(single) != 3 or len(pair) != 5:
        return None, None
    cls_tok, sep_tok = single[0][1], single[2][1]
    want_single = [("SpecialToken", cls_tok, 0), ("Sequence", "A", 0), ("SpecialToken", sep_tok, 0)]
    want_pair = want_single + [("Sequence", "B", 1), ("SpecialToken", sep_tok, 1)]
    if single != want_single or pair != want_pair:
        return None, None
    return cls_tok, sep_tok


def _read_config(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Settings from tokenizer_config.json or special_tokens_map.json that override tokenizer.json."""
    data = _read_json(path)
    out: dict[str, Any] = {}
    if data.get("do_basic_tokenize", True) is False:
        raise ValueError(f"{path}: do_basic_tokenize=false is not supported")
    for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        if key in data:
            out[key] = data[key]
    if "do_lower_case" in data:
        out.setdefault("strip_accents", None)  # None follows the (possibly new) casing, as in BERT
    for key in _SPECIAL_NAMES:
        value = data.get(key)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    max_len = data.get("model_max_length", data.get("max_len"))
    if isinstance(max_len, int | float) and not isinstance(max_len, bool):
        out["model_max_length"] = int(max_len) if max_len < _VERY_LARGE else None
    # Newer configs list added tokens by id; they matter when there is no tokenizer.json.
    decoder = data.get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        added = {a.id: a for a in kwargs.get("added_tokens") or []}
        for key, entry in decoder.items():
            try:
                added.setdefault(
                    int(key),
                    AddedToken(
                        content=entry["content"],
                        id=int(key),
                        special=bool(entry.get("special", False)),
                        single_word=bool(entry.get("single_word", False)),
                        lstrip=bool(entry.get("lstrip", False)),
                        rstrip=bool(entry.get("rstrip", False)),
                        normalized=bool(entry.get("normalized", False)),
                    ),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{path}: malformed added_tokens_decoder entry {key!r} ({e})") from None
        out["added_tokens"] = sorted(added.values(), key=lambda a: a.id)
    return out
