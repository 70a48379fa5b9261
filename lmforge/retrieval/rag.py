"""Retrieval-augmented generation: answer from retrieved passages, cite them, refuse when they are missing.

Lewis et al., "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks" (2020): a language model
knows only what its weights memorised; give it the relevant passages in the prompt and it can answer from
them instead — with sources a reader can check. The pipeline:

1. chunk documents (by tokens with overlap, so a fact cut at a boundary is whole in one of two chunks; or
   by paragraphs) and index the chunks;
2. retrieve (BM25 / dense / hybrid) → rerank → keep the top few;
3. build a grounded prompt: numbered sources, the instruction to answer only from them and cite [n];
4. generate with the chat model; parse the citations;
5. guardrail: when retrieval finds nothing relevant enough, say so instead of letting the model guess.

Evaluation (``groundedness``): the share of answer sentences supported by the passages they cite — judged
lexically (most of the sentence's content words occur in a cited passage) and by the model (a yes/no
question "does the text support the statement?"). Both are reported: the lexical judge is strict about
wording, the model judge is lenient and only as good as the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import regex

from lmforge.retrieval.analysis import Analyzer

REFUSAL = "I could not find this in the indexed documents."
SYSTEM = (
    "Answer the question using only the numbered sources. Cite the sources you use like [1]. "
    "If the sources do not contain the answer, say that you do not know."
)


def chunk_tokens(
    text: str, size: int = 200, overlap: int = 40, count: Callable[[str], int] | None = None
) -> list[str]:
    """Cut text into chunks of at most ``size`` tokens, each repeating the last ``overlap`` tokens of the
    one before. Chunks are exact substrings, cut between words; ``count`` gives a word's token count in the
    embedder's tokenizer (default 1 per word)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(
            f"chunking needs size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}"
        )
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if not words:
        return []
    cost = [count(text[a:b]) if count else 1 for a, b in words]
    chunks, start = [], 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and (used + cost[end] <= size or end == start):
            used += cost[end]
            end += 1
        chunks.append(text[words[start][0] : words[end - 1][1]])
        if end >= len(words):
            break
        back, tokens = end, 0  # step back over `overlap` tokens for the next chunk's start
        while back > start + 1 and tokens + cost[back - 1] <= overlap:
            back -= 1
            tokens += cost[back]
        start = back
    return chunks


def chunk_paragraphs(text: str, max_chars: int = 1500) -> list[str]:
    """Split at blank lines; merge short paragraphs up to ``max_chars``; split longer ones at sentence ends."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out: list[str] = []
    for p in paras:
        pieces = [p] if len(p) <= max_chars else _split_long(p, max_chars)
        for piece in pieces:
            if out and len(out[-1]) + 2 + len(piece) <= max_chars:
                out[-1] += "\n\n" + piece
            else:
                out.append(piece)
    return out


def _split_long(p: str, max_chars: int) -> list[str]:
    out, cur = [], ""
    for s in sentences(p):
        if cur and len(cur) + 1 + len(s) > max_chars:
            out.append(cur)
            cur = s
        else:
            cur = f"{cur} {s}".strip()
    return out + ([cur] if cur else [])


def sentences(text: str) -> list[str]:
    """Split at ., ! or ? followed by space and a capital letter, digit or bracket (good enough for answers)."""
    parts = regex.split(r"(?<=[.!?])\s+(?=[\p{Lu}\d\[(\"])", text.strip())
    return [p.strip() for p in parts if p.strip()]


def build_prompt(question: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages: the rules, then numbered sources and the question."""
    sources = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}"},
    ]


def citations(answer: str, n_sources: int) -> list[int]:
    """The source numbers an answer cites ([2], [1, 3]), in order, valid ones only."""
    seen = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer):
        for x in group.split(","):
            i = int(x)
            if 1 <= i <= n_sources and i not in seen:
                seen.append(i)
    return seen


_CONTENT = Analyzer(stemmer="english")


def lexical_support(sentence: str, passage: str, threshold: float = 0.5) -> bool:
    """A sentence is supported when at least ``threshold`` of its content words (stemmed, no stop words)
    occur in the passage. Citation markers do not count as words."""
    words = set(_CONTENT(re.sub(r"\[\d+(?:\s*,\s*\d+)*\]", " ", sentence)))
    if not words:
        return True  # nothing to support ("Yes.")
    return len(words & set(_CONTENT(passage))) / len(words) >= threshold


@dataclass
class Answer:
    question: str
    text: str
    sources: list[tuple[str, float]]  # (doc id, retrieval score) in prompt order
    cited: list[int] = field(default_factory=list)  # 1-based numbers into sources
    refused: bool = False


class RAG:
    """retrieve → (rerank) → grounded prompt → generate, with a refusal when retrieval is too weak.

    ``retrieve(question, k)`` returns ranked (doc id, score); ``min_score`` is the lowest top score that
    counts as relevant (its scale is the retriever's: cosine for dense, BM25 for lexical)."""

    def __init__(
        self,
        retrieve: Callable[[str, int], list[tuple[str, float]]],
        docs: dict[str, str],
        model,
        k: int = 3,
        min_score: float | None = None,
        reranker=None,
        rerank_depth: int = 20,
        max_tokens: int = 160,
    ):
        self.retrieve, self.docs, self.model = retrieve, docs, model
        self.k, self.min_score, self.reranker, self.depth, self.max_tokens = (
            k,
            min_score,
            reranker,
            rerank_depth,
            max_tokens,
        )

    def passages(self, question: str) -> list[tuple[str, float]]:
        hits = self.retrieve(question, self.depth if self.reranker else self.k)
        if not hits or (self.min_score is not None and hits[0][1] < self.min_score):
            return []
        if self.reranker is not None:
            hits = self.reranker.rerank(question, hits, self.docs)
        return hits[: self.k]

    def answer(self, question: str) -> Answer:
        from lmforge.infer.generate import generate

        if not question.strip():
            raise ValueError("the question is empty")
        hits = self.passages(question)
        if not hits:
            return Answer(question, REFUSAL, [], [], refused=True)
        text = generate(
            self.model, build_prompt(question, [self.docs[d] for d, _ in hits]), max_tokens=self.max_tokens
        )
        return Answer(question, text.strip(), hits, citations(text, len(hits)))

    def groundedness(self, ans: Answer, judge=None) -> dict[str, float]:
        """Share of answer sentences supported by a cited passage (all passages when none is cited):
        ``lexical`` always, ``model`` when a judge (an LLMReranker) is given."""
        if ans.refused or not ans.sources:
            return {}
        cited = ans.cited or list(range(1, len(ans.sources) + 1))
        texts = [self.docs[ans.sources[i - 1][0]] for i in cited]
        sents = sentences(ans.text) or [ans.text]
        out = {"lexical": sum(any(lexical_support(s, t) for t in texts) for s in sents) / len(sents)}
        if judge is not None:
            ok = 0
            for s in sents:
                q = f"Text: {' '.join(texts)[:3000]}\nStatement: {s}\nDoes the text support the statement? Reply with only yes or no."
                ok += judge.ask(q) > 0
            out["model"] = ok / len(sents)
        return out
