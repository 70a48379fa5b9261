"""Perplexity: the exponent of the cross-entropy, and the per-word and per-byte versions that compare models.

A language model gives a text x of N tokens the probability p(x) = Π_t p(x_t | x_<t). Its cross-entropy is
H = -(1/N) Σ_t log p(x_t | x_<t) nats per token, and the perplexity exp(H) is the size of a uniform choice
that would be as surprised: a perplexity of 20 means the model is, on average, as unsure as if it picked
among 20 equally likely tokens (the "effective number of choices").

Per token, perplexity depends on the tokenizer — a model with a bigger vocabulary has fewer, harder tokens
— so lm-evaluation-harness reports WikiText with the same total log-likelihood divided by units every
model agrees on (its `wikitext` task; Merity et al. 2016 for the data):

    word_perplexity = exp(-Σ log p / #words)    words: re.split(r"\\s+", original document)
    byte_perplexity = exp(-Σ log p / #bytes)    bytes: UTF-8 of the original document
    bits_per_byte   = -Σ log p / #bytes / ln 2

The counts come from the *original* WikiText page, while the model reads it after lm-eval's detokenizer
(" @-@ " → "-", " , " → ", ", ...), exactly as lm-eval does.

Documents longer than the context window are scored in rolling windows (lm-eval's
`get_rolling_token_windows`): the first window starts from a prefix token (BOS, else EOS) so the first
real token is predicted too, and each next window predicts the next `stride` tokens given the max_len -
stride tokens before them. stride = max_len (lm-eval's default) gives disjoint windows, each conditioned
on one token of the previous; a smaller stride gives every token more context (lower perplexity, more
work), the sliding-window evaluation of Hugging Face's perplexity guide.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.eval.loglik import Group, LogLikelihood, prefix_token


def rolling_windows(
    tokens: Sequence[int], prefix: int, max_len: int, stride: int | None = None
) -> Iterator[tuple[list[int], list[int]]]:
    """(context, continuation) windows that predict every token exactly once, each input ≤ max_len tokens.

    As lm-eval's get_rolling_token_windows + make_disjoint_window with context_len = max_len - stride + 1."""
    stride = stride or max_len
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be between 1 and max_len ({max_len}), not {stride}")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_len, len(tokens))
    yield [prefix], tokens[:first]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, stride)
        end = done + n
        window = tokens[max(end - max_len - 1, 0) : end - 1]  # the model's input: max_len tokens
        yield window[: len(window) - (n - 1)], tokens[end - n : end]
        done = end


def wikitext_documents(path: str | Path) -> list[str]:
    """WikiText pages: a new one starts at each top-level heading " = Title = " (lm-eval's
    EleutherAI/wikitext_document_level split). Read in text mode, so Windows line ends become "\\n"."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    docs, current = [], []
    for line in lines:
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                docs.append(page)
            current = []
        current.append(line)
    docs.append("\n".join(current))
    return docs


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenization (" @-@ ", spaces before punctuation): lm-eval's wikitext_detokenizer."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):  # fmt: skip
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):  # fmt: skip
        s = s.replace(a, b)
    return s


@dataclass
class Perplexity:
    """Totals over documents, and the perplexities they give."""

    loglik: float  # Σ log p, nats
    tokens: int
    words: int
    bytes: int
    documents: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.loglik / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.loglik / self.words)

    @property
    def byte_perplexity(self) -> float:
        return math.exp(-self.loglik / self.bytes)

    @property
    def bits_per_byte(self) -> float:
        return -self.loglik / self.bytes / math.log(2)

    def as_dict(self) -> dict[str, float]:
        return {"word_perplexity": self.word_perplexity, "byte_perplexity": self.byte_perplexity,
                "bits_per_byte": self.bits_per_byte, "token_perplexity": self.token_perplexity,
                "loglik": self.loglik, "tokens": self.tokens, "words": self.words, "bytes": self.bytes,
                "documents": self.documents}  # fmt: skip


def document_logliks(
    scorer: LogLikelihood,
    tokenizer,
    texts: Sequence[str],
    max_len: int | None = None,
    stride: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, int]]:
    """(Σ log p, tokens) of each text, scored in rolling windows."""
    max_len = max_len or scorer.max_len
    prefix = prefix_token(tokenizer)
    groups, owner = [], []
    for d, text in enumerate(texts):
        for ctx, cont in rolling_windows(tokenizer.encode(text), prefix, max_len, stride):
            groups.append(Group(ctx, [cont]))
            owner.append(d)
    totals = [[0.0, 0] for _ in texts]
    for d, (scored,) in zip(owner, scorer.score(groups, progress)):
        totals[d][0] += scored.logprob
        totals[d][1] += scored.n_tokens
    return [(lp, n) for lp, n in totals]


def perplexity(
    scorer: LogLikelihood,
    tokenizer,
    originals: Sequence[str],
    detokenize: Callable[[str], str] | None = None,
    max_len: int | None = None,
    stride: int | None = None,
) -> Perplexity:
    """Perplexities of documents: the model reads detokenize(doc), words and bytes count the original."""
    texts = [detokenize(d) if detokenize else d for d in originals]
    per_doc = document_logliks(scorer, tokenizer, texts, max_len, stride)
    return Perplexity(
        loglik=sum(lp for lp, _ in per_doc),
        tokens=sum(n for _, n in per_doc),
        words=sum(len(re.split(r"\s+", d)) for d in originals),
        bytes=sum(len(d.encode("utf-8")) for d in originals),
        documents=len(originals),
    )
