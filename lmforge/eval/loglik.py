"""Log-likelihood scoring: how probable does the model find a continuation after a context?

Most benchmarks for base models are not generated but *scored* (Brown et al. 2020, "Language Models are
Few-Shot Learners", §2.4; Gao et al. 2021, lm-evaluation-harness). For a question with k answers we ask the
model for log p(answer_i | question) = Σ_t log p(a_t | question, a_<t) and pick the most probable one. The
same number gives perplexity (one continuation, the whole document) and LAMBADA (is the last word the
greedy choice?).

Tokenization follows lm-evaluation-harness exactly, because a benchmark score moves by points when the
boundary between context and continuation is tokenized differently:

  * trailing spaces of the context move to the continuation ("Answer:" + " Paris"), and
  * the continuation's tokens are those of encode(context + continuation) past len(encode(context)),
    so a word is tokenized as it would be in running text, not on its own.
  * an empty context becomes one "prefix" token (BOS, else EOS), so the first token is predicted too.

Sharing the context. The k answers of one question share their context, and lm-eval's Hugging Face
backend runs it k times. We run it once: the context and all k continuations go into one row, and the
attention mask is a *prefix tree* — each continuation sees the context and itself, never a sibling — with
positions restarting after the context for every branch. Each answer then gets exactly the
log-probabilities it would get alone (tests check this against transformers, one request at a time), for
a fraction of the work (ARC: a 40-token question and four 5-token answers cost 60 tokens, not 180).
Several such trees are packed into one row (a block-diagonal mask, as in packed training) and several
rows into one batch, so the matrix products stay large enough to run near the CPU's peak.

A model with a sliding window (Gemma 3's local layers) counts the window in row indices, which run ahead
of positions inside a tree; such a tree is split into one row per answer when it is longer than the
window, which keeps every answer's view exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scored:
    """The result for one continuation: Σ log p, and whether every token was the argmax (greedy)."""

    logprob: float
    greedy: bool
    n_tokens: int


@dataclass
class Group:
    """One context and the continuations scored after it (token ids); results come back in this order."""

    context: list[int]
    continuations: list[list[int]]

    def __len__(self) -> int:
        return len(self.context) + sum(len(c) for c in self.continuations)


def encode_pair(
    tokenizer, context: str, continuation: str, add_bos: bool = False
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness's `_encode_pair` makes them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:  # "Answer: " + "Paris" → "Answer:" + " Paris": a space belongs to the word after it
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    prefix = [prefix_token(tokenizer)] if add_bos else []
    if not context:
        ids = tokenizer.encode(continuation)
        return [prefix_token(tokenizer)], ids
    whole = prefix + tokenizer.encode(context + continuation)
    ctx = prefix + tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def prefix_token(tokenizer) -> int:
    """The token an empty context stands for: BOS when the model has one, else EOS (lm-eval's choice)."""
    for tid in (tokenizer.bos_id, tokenizer.eos_id):
        if tid is not None:
            return tid
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start an empty context with")


def truncate(group: Group, max_len: int) -> Group:
    """Keep each branch within max_len tokens by cutting the context from the left, as lm-eval does
    (it keeps the last max_len + 1 tokens of context + continuation)."""
    longest = max(len(c) for c in group.continuations)
    if longest > max_len:
        raise ValueError(f"a continuation of {longest} tokens is longer than the model's {max_len}")
    keep = max_len - longest + 1  # the last input token is never fed: it is only predicted
    return group if len(group.context) <= keep else Group(group.context[-keep:], group.continuations)


def pack(groups: Sequence[Group], row_len: int) -> list[list[int]]:
    """Indices of groups per row, first-fit over groups sorted longest first (a group longer than row_len
    gets a row of its own). Longest first also makes the first batch the largest, so running out of
    memory shows at once, not an hour in (lm-eval orders its requests the same way for that reason)."""
    order = sorted(range(len(groups)), key=lambda i: -len(groups[i]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(groups[i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(row_len - n)
    return rows


@dataclass
class _Row:
    ids: list[int]
    positions: list[int]
    tree: list[int]  # which group (tree) of the row a token belongs to
    branch: list[int]  # 0: the shared context; k + 1: continuation k
    targets: list[tuple[int, int, int, int]]  # (group, continuation, predicting index, target token)


def _layout(groups: Sequence[Group], members: Sequence[int]) -> _Row:
    """Lay the trees of one row out: context, then each continuation, positions restarting per branch."""
    row = _Row([], [], [], [], [])
    for tree, g in enumerate(members):
        group = groups[g]
        c = len(group.context)
        start = len(row.ids)
        row.ids += group.context
        row.positions += range(c)
        row.tree += [tree] * c
        row.branch += [0] * c
        for k, cont in enumerate(group.continuations):
            first = len(row.ids)
            row.ids += cont
            row.positions += range(c, c + len(cont))
            row.tree += [tree] * len(cont)
            row.branch += [k + 1] * len(cont)
            for j, tok in enumerate(cont):
                # token j of a branch is predicted by the token before it: the context's last for j = 0
                row.targets.append((g, k, start + c - 1 if j == 0 else first + j - 1, tok))
    return row


def tree_mask(tree: torch.Tensor, branch: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) allowed pairs: same tree, key not after query, key in the context or the query's branch.

    tree, branch, valid: (B, T). Padding sees only itself (a query with nothing to see would be NaN)."""
    t = tree.shape[1]
    same_tree = tree[:, :, None] == tree[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    shared = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    allowed = same_tree & causal & shared & valid[:, None, :] & valid[:, :, None]
    allowed |= torch.eye(t, dtype=torch.bool)
    return allowed[:, None]


UNEMBED_CHUNK = 1024  # scored positions per unembedding product


class LogLikelihood:
    """Scores Groups with a causal Transformer (lmforge.model.transformer: hidden_states + logits)."""

    def __init__(self, model, max_len: int | None = None, row_len: int = 512, rows_per_batch: int = 2):
        if not hasattr(model, "hidden_states") or not getattr(model.config, "causal", False):
            raise ValueError(f"log-likelihood scoring needs a causal decoder, not {type(model).__name__}")
        self.model = model
        self.max_len = max_len or model.config.max_seq_len
        self.window = (
            model.config.sliding_window
            if any(model.config.is_sliding(i) for i in range(model.config.n_layers))
            else None
        )
        self.row_len = row_len
        self.rows_per_batch = rows_per_batch

    def _prepare(self, groups: Iterable[Group]) -> list[tuple[int, int, Group]]:
        """(original group, first continuation index, group) with trees longer than the window split."""
        out = []
        for i, g in enumerate(groups):
            g = truncate(g, self.max_len)
            if self.window is not None and len(g.continuations) > 1 and len(g) > self.window:
                out += [(i, k, Group(g.context, [c])) for k, c in enumerate(g.continuations)]
            else:
                out.append((i, 0, g))
        return out

    @torch.no_grad()
    def score(
        self, groups: Sequence[Group], progress: Callable[[int], None] | None = None
    ) -> list[list[Scored]]:
        """Scored continuations, group by group. progress(n) is called with the groups finished."""
        parts = self._prepare(groups)
        flat = [g for _, _, g in parts]
        rows = pack(flat, self.row_len)
        results: list[list[Scored | None]] = [[None] * len(g.continuations) for g in groups]
        for batch in _chunks(rows, self.rows_per_batch):
            for part, k, scored in self._run([_layout(flat, members) for members in batch]):
                i, first, _ = parts[part]
                results[i][first + k] = scored
            if progress is not None:
                progress(sum(len(m) for m in batch))
        return results  # type: ignore[return-value]

    def _run(self, rows: list[_Row]) -> Iterator[tuple[int, int, Scored]]:
        model = self.model
        t = max(len(r.ids) for r in rows)

        def padded(field: str, fill: int) -> torch.Tensor:
            return torch.tensor([getattr(r, field) + [fill] * (t - len(r.ids)) for r in rows])

        ids = padded("ids", 0)
        device = model.device
        if all(max(r.tree) == 0 and max(r.branch) <= 1 for r in rows):
            # One context and one continuation per row (perplexity windows, LAMBADA-length rows): the tree
            # is a plain causal sequence at positions 0..T-1, so no mask tensor — SDPA's causal kernel
            # instead of a (B, 1, T, T) mask, which at T = 8192 costs more than the matrix products.
            # Right padding is harmless: a causal query never sees the keys after it.
            h = model.hidden_states(ids.to(device))  # (B, T, D)
        else:
            tree, branch = padded("tree", -1), padded("branch", 0)
            mask = tree_mask(tree, branch, tree >= 0)
            h = model.hidden_states(
                ids.to(device), attention_mask=mask.to(device), position_ids=padded("positions", 0).to(device)
            )  # (B, T, D)
        # Only the positions that predict a continuation token go through the unembedding: for Gemma's
        # 262k-token vocabulary that matrix product would otherwise cost more than the whole model. It runs
        # in chunks of UNEMBED_CHUNK positions, so an 8k-token window never holds (8k, V) logits at once.
        where = [(r, idx) for r, row in enumerate(rows) for (_, _, idx, _) in row.targets]
        rr = torch.tensor([w[0] for w in where], device=device)
        ii = torch.tensor([w[1] for w in where], device=device)
        target = torch.tensor([tok for row in rows for (*_, tok) in row.targets], device=device)
        lps, hits = [], []
        for s in range(0, len(where), UNEMBED_CHUNK):
            sl = slice(s, s + UNEMBED_CHUNK)
            logits = model.logits(h[rr[sl], ii[sl]]).float()  # (N, V)
            logp = torch.log_softmax(logits, dim=-1)
            lps.append(logp.gather(1, target[sl, None])[:, 0].cpu())
            hits.append((logits.argmax(-1) == target[sl]).cpu())
        token_lp, greedy = torch.cat(lps), torch.cat(hits)
        n = 0
        for row in rows:
            sums: dict[tuple[int, int], list] = {}
            for g, k, _, _ in row.targets:
                acc = sums.setdefault((g, k), [0.0, True, 0])
                acc[0] += float(token_lp[n])
                acc[1] = acc[1] and bool(greedy[n])
                acc[2] += 1
                n += 1
            for (g, k), (lp, gr, cnt) in sums.items():
                yield g, k, Scored(lp, gr, cnt)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
