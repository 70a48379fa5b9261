"""Text analysis for lexical search: the one function that turns text into index terms.

A sparse retriever only ever compares terms, so the same analyser must run at index time and at query
time — an index stores its analyser's settings and rebuilds it on load. The steps are the classic ones
(Manning, Raghavan & Schütze, *Introduction to Information Retrieval*, ch. 2):

1. lower-case (case carries little meaning for matching);
2. split on a Unicode-aware regex — ``\\w`` covers letters and digits of every script, so Greek, Cyrillic or
   accented words survive (the default pattern keeps runs of two or more word characters, as scikit-learn
   and bm25s do);
3. drop stop words — function words like "the" and "of" occur everywhere, carry no topic, and only cost
   postings (the default list is Lucene's 33-word English set);
4. stem — map "flows", "flowing" and "flowed" to "flow" with the Snowball (Porter 2) stemmer, so a query
   matches a document that inflects the word differently.

    >>> Analyzer(stemmer="english")("The flows were flowing past the wings.")
    ['flow', 'were', 'flow', 'past', 'wing']
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import regex

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (also bm25s's "en" list).
ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
STOP_WORD_LISTS = {"en": ENGLISH_STOP_WORDS, "english": ENGLISH_STOP_WORDS}


def _stemmer(language: str):
    try:
        import Stemmer  # PyStemmer: the Snowball stemmers in C
    except ImportError:
        try:
            import snowballstemmer as Stemmer  # the same algorithms in pure Python
        except ImportError:
            raise ImportError("stemming needs PyStemmer or snowballstemmer: pip install PyStemmer") from None
    try:
        return Stemmer.Stemmer(language) if hasattr(Stemmer, "Stemmer") else Stemmer.stemmer(language)
    except KeyError:
        raise ValueError(f"no Snowball stemmer for language {language!r}") from None


@dataclass
class Analyzer:
    """lower → regex split → stop words → stem. Call it on a string to get its terms."""

    lower: bool = True
    pattern: str = r"(?u)\b\w\w+\b"
    stopwords: str | list[str] | None = "en"  # a list name ("en"), your own words, or None
    stemmer: str | None = None  # a Snowball language ("english"), or None
    normalize: str | None = None  # a Unicode form ("NFKC" folds ligatures and full-width forms), or None
    _regex: Any = field(init=False, repr=False)
    _stop: frozenset = field(init=False, repr=False)
    _stem: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._regex = regex.compile(self.pattern)
        except regex.error as e:
            raise ValueError(f"analyser pattern {self.pattern!r} is not a valid regex: {e}") from None
        if self.stopwords is None:
            self._stop = frozenset()
        elif isinstance(self.stopwords, str):
            if self.stopwords not in STOP_WORD_LISTS:
                raise ValueError(
                    f"unknown stop-word list {self.stopwords!r}; known: {sorted(STOP_WORD_LISTS)}"
                )
            self._stop = STOP_WORD_LISTS[self.stopwords]
        else:
            self._stop = frozenset(w.lower() if self.lower else w for w in self.stopwords)
        self._stem = _stemmer(self.stemmer) if self.stemmer else None
        self._cache: dict[str, str] = {}  # word → stem: a corpus repeats its words, stemming is the slow step

    def __call__(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"the analyser takes a string, got {type(text).__name__}")
        if self.normalize:
            text = unicodedata.normalize(self.normalize, text)
        if self.lower:
            text = text.lower()
        words = [w for w in self._regex.findall(text) if w not in self._stop]
        if self._stem is None:
            return words
        cache = self._cache
        out = []
        for w in words:
            s = cache.get(w)
            if s is None:
                s = cache[w] = self._stem.stemWord(w)
            out.append(s)
        return out

    def config(self) -> dict[str, Any]:
        """The settings, to store beside an index (the analyser is rebuilt from them on load)."""
        return {k: getattr(self, k) for k in ("lower", "pattern", "stopwords", "stemmer", "normalize")}
