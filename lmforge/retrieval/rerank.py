"""Reranking: score each (query, candidate) pair jointly, then reorder the first-stage top k.

A bi-encoder embeds query and passage apart, so they never see each other. A cross-encoder (Nogueira &
Cho, "Passage Re-ranking with BERT", 2019) reads ``[CLS] query [SEP] passage [SEP]`` through every layer,
so attention can align query terms with passage terms; it is far more accurate per pair and far too slow
to run over a whole corpus — hence retrieve (BM25 / dense / hybrid, top 30-100) then rerank.

- ``CrossEncoder``: MiniLM's BERT + its pooler (dense + tanh on [CLS]) + a linear layer to one relevance
  logit — the layout of Hugging Face's BertForSequenceClassification, so a trained one saves as a
  folder that transformers and sentence-transformers' CrossEncoder load. Trained listwise: each query
  with one relevant passage and n BM25-mined non-relevant ones, softmax cross-entropy over the group
  (the "localized contrastive estimation" of Gao, Dai & Callan, 2021).
- ``LLMReranker``: a chat model asked "is this passage relevant to the query? yes/no"; the score is
  log p(yes) − log p(no) of the next token (pointwise, as in Liang et al.'s HELM MS MARCO setup and
  Nogueira et al.'s monoT5). No training; its quality is the chat model's.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.bert import BertEncoder, load_bert_folder, save_bert_folder

Hits = list[tuple[str, float]]


def rerank_hits(
    score: Callable[[str, list[str]], np.ndarray],
    query: str,
    hits: Hits,
    docs: Mapping[str, str],
    top: int | None,
) -> Hits:
    """Reorder a first stage's ``hits`` by ``score(query, passages)``, best first; both rerankers use it."""
    if not hits:
        return []
    scores = score(query, [docs[d] for d, _ in hits])
    out = sorted(zip((d for d, _ in hits), np.asarray(scores).tolist()), key=lambda x: -x[1])
    return out[:top] if top else out


class CrossEncoder(nn.Module):
    """(query, passage) → one relevance logit, from a BERT encoder."""

    def __init__(self, bert: BertEncoder, max_length: int = 256):
        super().__init__()
        dim = bert.config.dim
        self.bert, self.max_length = bert, max_length
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 1)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, max_length: int = 256) -> CrossEncoder:
        """From a BERT folder: a plain encoder gets a new head; a saved cross-encoder gets its own back."""
        from safetensors import safe_open

        path = Path(path)
        bert = load_bert_folder(path)
        self = cls(bert, max_length)
        heads = {}
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                for k in h.keys():
                    name = k.removeprefix("bert.")
                    if name.startswith(("pooler.dense.", "classifier.")):
                        heads[name.replace("pooler.dense.", "pooler.")] = h.get_tensor(k)
        for name, t in heads.items():
            target = self.get_parameter(name)
            if target.shape != t.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, expected {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(t)
        return self.eval()

    def forward(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        h, _ = self.bert.hidden_states(list(queries), list(passages), self.max_length)  # (B, T, D)
        return self.classifier(torch.tanh(self.pooler(h[:, 0]))).squeeze(-1)  # (B,)

    @torch.inference_mode()
    def score(self, query: str, passages: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = []
        order = sorted(range(len(passages)), key=lambda i: -len(passages[i]))  # similar lengths batch well
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out.append((idx, self([query] * len(idx), [passages[i] for i in idx]).float().numpy()))
        scores = np.empty(len(passages), np.float32)
        for idx, v in out:
            scores[idx] = v
        return scores

    def rerank(self, query: str, hits: Hits, docs: Mapping[str, str], top: int | None = None) -> Hits:
        """Reorder ``hits`` (the first stage's top k) by cross-encoder score."""
        return rerank_hits(self.score, query, hits, docs, top)

    def save(self, folder: str | os.PathLike) -> Path:
        """A BertForSequenceClassification folder (num_labels 1): transformers and sentence-transformers load it."""
        extra = {
            "bert.pooler.dense.weight": self.pooler.weight,
            "bert.pooler.dense.bias": self.pooler.bias,
            "classifier.weight": self.classifier.weight,
            "classifier.bias": self.classifier.bias,
        }
        cfg = {
            "architectures": ["BertForSequenceClassification"],
            "num_labels": 1,
            "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0},
        }
        return save_bert_folder(self.bert, folder, extra=extra, config=cfg, prefix="bert.")


def train_cross_encoder(
    model: CrossEncoder,
    groups: Sequence[tuple[str, str, list[str]]],
    epochs: int = 1,
    groups_per_step: int = 4,
    lr: float = 5e-5,
    head_lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Listwise training: each group (query, relevant passage, [non-relevant passages]) is a softmax
    over its passages with the relevant one as the label. AdamW, 10% warm-up then linear decay, clip 1.0.

    The pooler and classifier start untrained, and a few hundred steps at BERT's fine-tuning rate barely
    move them (the loss stays at log n), so they get their own, larger rate ``head_lr``."""
    from lmforge.train.optim import AdamW, param_groups
    from lmforge.train.schedules import set_lr, warmup_stable_decay
    from lmforge.train.steps import LossBar, optimizer_step

    groups = [g for g in groups if g[2]]
    if not groups:
        raise ValueError("no training group has a negative passage")
    rnd = random.Random(seed)
    steps = []
    for _ in range(epochs):
        order = list(groups)
        rnd.shuffle(order)
        steps += [order[i : i + groups_per_step] for i in range(0, len(order), groups_per_step)]
    total, warm = len(steps), max(1, len(steps) // 10)
    head = [*model.pooler.parameters(), *model.classifier.parameters()]
    opt = AdamW(
        [*param_groups(model.bert, 0.01), {"params": head, "weight_decay": 0.0, "lr_scale": head_lr / lr}],
        lr=lr,
    )
    model.train()
    bar = LossBar(total, "cross-encoder", progress)
    losses = []
    for step, chunk in enumerate(steps):
        set_lr(opt, warmup_stable_decay(step, lr, 0.0, warm, total, decay_fraction=1.0))
        qs, ps, sizes = [], [], []
        for q, pos, negs in chunk:
            qs += [q] * (1 + len(negs))
            ps += [pos, *negs]
            sizes.append(1 + len(negs))
        logits = model(qs, ps).split(sizes)  # one (1 + n,) per group; index 0 is the relevant passage
        loss = torch.stack(
            [F.cross_entropy(x[None], torch.zeros(1, dtype=torch.long)) for x in logits]
        ).mean()
        losses.append(optimizer_step(opt, loss, model.parameters(), 1.0, "cross-encoder loss", step))
        bar.update(losses[-1])
    bar.close()
    model.eval()
    return losses


class LLMReranker:
    """Pointwise relevance from a chat model: log p("yes") − log p("no") after a yes/no question."""

    # Among the wordings we tried on SmolLM2-135M-Instruct, this one (question first, "reply with only
    # yes or no") was the only one to rank an obviously relevant passage first on every probe pair.
    PROMPT = (
        "Here is a question and a text.\nQuestion: {query}\nText: {passage}\n"
        "Does the text answer the question? Reply with only yes or no."
    )

    def __init__(self, model, tokenizer, chat_template: bool = True, max_passage_chars: int = 1500):
        self.model, self.tok, self.chat, self.max_chars = model, tokenizer, chat_template, max_passage_chars
        self.yes = self._first_tokens(["yes", "Yes", " yes", " Yes"])
        self.no = self._first_tokens(["no", "No", " no", " No"])

    def _first_tokens(self, words: list[str]) -> list[int]:
        return sorted({self.tok.encode(w)[0] for w in words if self.tok.encode(w)})

    def ids(self, text: str) -> list[int]:
        """A user message as prompt token ids, in the chat template when the reranker uses one."""
        if self.chat:
            if getattr(self.tok, "chat_template", None) is None:
                raise ValueError("this model has no chat template; pass chat_template=False")
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True
            )
        return self.tok.encode(text)

    def prompt(self, query: str, passage: str) -> list[int]:
        return self.ids(self.PROMPT.format(passage=passage[: self.max_chars], query=query))

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """log p(yes) − log p(no) per passage."""
        return np.array([self.judge(self.prompt(query, p)) for p in passages], np.float32)

    @torch.inference_mode()
    def judge(self, ids: list[int]) -> float:
        """log p(yes) − log p(no) for the token after a prompt (one row: prompts differ in length, and on a
        CPU a batch of padded rows costs as much). RAG's yes/no answers and its groundedness judge use it too."""
        dev = next(self.model.parameters()).device
        lp = torch.log_softmax(self.model(torch.tensor([ids], device=dev))[0, -1].float(), -1)  # (V,)
        return float(torch.logsumexp(lp[self.yes], -1) - torch.logsumexp(lp[self.no], -1))

    def ask(self, text: str) -> float:
        """``judge`` for any yes/no question."""
        return self.judge(self.ids(text))

    def rerank(self, query: str, hits: Hits, docs: Mapping[str, str], top: int | None = None) -> Hits:
        return rerank_hits(self.score, query, hits, docs, top)
