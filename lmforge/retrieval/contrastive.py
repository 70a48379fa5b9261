"""Contrastive tuning of a bi-encoder: pull each query towards its relevant passage, push it from others.

InfoNCE (van den Oord et al., 2018; as "MultipleNegativesRankingLoss" in sentence-transformers and in
DPR, Karpukhin et al., 2020): for a batch of B (query, positive) pairs with unit embeddings q_i and p_j,

    L = −(1/B) Σ_i log  exp(q_i·p_i / τ) / Σ_j exp(q_i·p_j / τ)

— a B-way classification in which every other pair's positive is a free *in-batch negative*. τ (0.05,
i.e. a scale of 20) sharpens the softmax. Two details decide whether it works:

- no duplicate texts in a batch: if a query appears twice, or a passage relevant to query i is the
  positive of query j, the loss pushes i away from a relevant passage (a false negative);
- *hard negatives*: random in-batch passages are easy to tell apart; passages BM25 ranks high but that
  are not relevant (mined per query) teach the fine distinctions. Each pair may bring one, appended as
  extra columns of the softmax.

The triplet loss (Schroff et al., FaceNet 2015) is the margin-based alternative:
max(0, m − q·p + q·n) per (query, positive, negative).

Training pairs come from labelled queries (qrels) or, for an unlabelled corpus, from pseudo-queries the
chat model writes for each passage (doc2query, Nogueira et al., 2019).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.retrieval.bm25 import BM25


def info_nce(
    q: torch.Tensor, p: torch.Tensor, hard: torch.Tensor | None = None, temperature: float = 0.05
) -> torch.Tensor:
    """InfoNCE over in-batch negatives (+ optional hard negatives): q (B, D), p (B, D), hard (H, D)."""
    cands = p if hard is None else torch.cat([p, hard])  # (B + H, D)
    logits = q @ cands.T / temperature  # (B, B + H); row i's positive is column i
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def triplet(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Mean max(0, margin − cos(q, p) + cos(q, n)) over the batch (unit vectors)."""
    return F.relu(margin - (q * p).sum(-1) + (q * n).sum(-1)).mean()


@dataclass
class Example:
    query: str
    positive: str
    negative: str | None = None
    qid: str = ""
    pid: str = ""


def pairs_from_qrels(
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    min_grade: int = 1,
) -> list[Example]:
    """One example per (query, judged-relevant passage) with grade ≥ min_grade."""
    out = []
    for qid, judged in qrels.items():
        if qid not in queries:
            continue
        for pid, g in sorted(judged.items()):
            if g >= min_grade and pid in docs:
                out.append(Example(queries[qid], docs[pid], None, qid, pid))
    return out


def mine_hard_negatives(
    examples: list[Example],
    bm25: BM25,
    docs: Mapping[str, str],
    known: Mapping[str, Mapping[str, int]],
    depth: int = 30,
    seed: int = 0,
) -> list[Example]:
    """Give each example a passage BM25 ranks in the query's top ``depth`` that is not judged relevant.

    ``known`` holds every judgment we have (relevant passages of a query are never its negatives)."""
    rnd = random.Random(seed)
    hits = {}
    for e in examples:
        if e.qid not in hits:
            hits[e.qid] = [d for d, _ in bm25.search(e.query, depth) if known.get(e.qid, {}).get(d, 0) <= 0]
    out = []
    for e in examples:
        cands = hits[e.qid]
        out.append(Example(e.query, e.positive, docs[rnd.choice(cands)] if cands else None, e.qid, e.pid))
    return out


def batches(
    examples: Sequence[Example], batch_size: int, seed: int = 0, related: Mapping[str, set[str]] | None = None
) -> list[list[Example]]:
    """Shuffle, then fill batches so that no query or passage text appears twice in one batch.

    ``related`` (qid → relevant passage ids) also keeps out a pair whose positive is relevant to another
    query already in the batch: in-batch negatives must really be negatives."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    out: list[list[Example]] = []
    open_: list[tuple[list[Example], set[str], set[str]]] = []  # (batch, texts, qids)
    for e in order:
        texts = {e.query, e.positive} | ({e.negative} if e.negative else set())
        for b, seen, qids in open_:
            clash = seen & texts
            if related is not None and not clash:
                clash = any(e.pid in related.get(q, ()) for q in qids) or any(
                    x.pid in related.get(e.qid, ()) for x in b
                )
            if not clash:
                b.append(e)
                seen |= texts
                qids.add(e.qid)
                break
        else:
            open_.append(([e], set(texts), {e.qid}))
        full = [x for x in open_ if len(x[0]) >= batch_size]
        for x in full:
            out.append(x[0])
            open_.remove(x)
    out.extend(b for b, _, _ in open_ if len(b) > 1)  # a batch of one has no in-batch negative
    return out


def train_embedder(
    encoder,
    examples: Sequence[Example],
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-5,
    temperature: float = 0.05,
    loss: str = "infonce",
    margin: float = 0.2,
    related: Mapping[str, set[str]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fine-tune a BertEncoder in place with InfoNCE (or triplet) loss; returns the loss of every step.

    AdamW with 10% linear warm-up then linear decay, gradients clipped at 1.0, as sentence-transformers."""
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.schedules import set_lr, warmup_stable_decay
    from lmforge.train.steps import LossBar, optimizer_step

    if loss not in ("infonce", "triplet"):
        raise ValueError(f"unknown contrastive loss {loss!r}; choose infonce or triplet")
    if loss == "triplet" and any(e.negative is None for e in examples):
        raise ValueError("the triplet loss needs a negative for every example: mine_hard_negatives first")
    plan = [batches(examples, batch_size, seed + ep, related) for ep in range(epochs)]
    total = sum(len(p) for p in plan)
    if total == 0:
        raise ValueError("no training batch: need at least two examples with distinct texts")
    warm = max(1, total // 10)
    opt = AdamW(param_groups(encoder, 0.01), lr=lr)
    encoder.train()
    losses: list[float] = []
    bar = LossBar(total, "contrastive", progress)
    step = 0
    for ep_batches in plan:
        for b in ep_batches:
            set_lr(opt, warmup_stable_decay(step, lr, 0.0, warm, total, decay_fraction=1.0))
            q = encoder.embed_texts([e.query for e in b])  # (B, D) unit vectors
            p = encoder.embed_texts([e.positive for e in b])
            negs = [e.negative for e in b if e.negative is not None]
            n = encoder.embed_texts(negs) if negs else None
            if loss == "infonce":
                value = info_nce(q, p, n, temperature)
            else:
                value = triplet(q, p, n, margin)
            losses.append(optimizer_step(opt, value, encoder.parameters(), 1.0, "contrastive loss", step))
            step += 1
            bar.update(losses[-1])
    bar.close()
    encoder.eval()
    return losses


DOC2QUERY_PROMPT = (
    "Write one short search query that the following passage answers.\n\nPassage: {passage}\n\nQuery:"
)


def pseudo_queries(
    chat_model, passages: Sequence[str], max_tokens: int = 24, max_chars: int = 1200, progress: bool = True
) -> list[str]:
    """doc2query: the chat model writes one query per passage (greedy; its first line, quotes stripped).

    These become (pseudo-query, passage) training pairs for a corpus without labelled queries."""
    from lmforge.infer.generate import generate

    out = []
    it = passages
    if progress:
        from tqdm import tqdm

        it = tqdm(passages, desc="doc2query", unit="passage")
    for p in it:
        msg = [{"role": "user", "content": DOC2QUERY_PROMPT.format(passage=p[:max_chars])}]
        text = generate(chat_model, msg, max_tokens=max_tokens, stop=["\n"])
        out.append(text.strip().strip('"').strip())
    return out
