"""Speculative decoding: a cheap drafter guesses k tokens, the target model checks them in one forward.

Decoding one token at a time is slow because every step is a whole forward of the model for a single
token, and a forward over k + 1 tokens costs little more than over one (the weights are read once).
Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling")
turns that into speed without changing what is generated:

1. a drafter proposes x_1 .. x_k, each drawn from its own distribution q_i (cheap: an n-gram lookup,
   or the model itself with layers skipped);
2. the target runs once over [last token, x_1 .. x_k] and gives p_1 .. p_{k+1}, its distributions
   for every draft position plus one more;
3. modified rejection sampling walks the drafts in order: x_i is kept with probability
   min(1, p_i(x_i) / q_i(x_i)); at the first rejection the replacement is drawn from the residual
   norm(max(0, p_i − q_i)) and the rest of the draft is dropped; if all k are kept, one bonus token is
   drawn from p_{k+1}.

Why the output is *exactly* the target's distribution: a token x comes out of step i either as an
accepted draft, with probability q(x) · min(1, p(x)/q(x)) = min(q(x), p(x)), or as a residual draw after
a rejection, with probability (1 − Σ_y min(q(y), p(y))) · max(0, p(x) − q(x)) / Σ_y max(0, p(y) − q(y));
both normalisers equal Σ_y max(0, p(y) − q(y)), so the sum is min(q, p) + max(0, p − q) = p(x).
A deterministic drafter (q one-hot on its guess, `probs=None`) keeps x with probability p(x) and
otherwise draws from p with x removed. Greedy decoding (temperature 0) is the limit: keep drafts while
they equal the target's argmax, then take the argmax — the same tokens as plain decoding.
Each round costs one target forward and yields between 1 and k + 1 tokens.

p_i comes from `process_logits` with the tokens seen up to that position, so temperature, top-k/p,
min-p, logit bias and the penalties shape it exactly as in `stream_ids`: the same distribution.

Drafters (the `Drafter` protocol: `propose(context_ids, k) -> (tokens, probs)`):
  - `NgramDrafter`: prompt lookup decoding (Saxena 2023): find the last earlier occurrence of the
    context's final n-gram and propose what followed it. Free, deterministic; strong when the output
    copies the input (rewriting, editing code, quoting).
  - `LayerSkipDrafter`: self-speculative decoding (Zhang et al. 2023, "Draft & Verify"; Elhoushi
    et al. 2024, "LayerSkip"): the target itself with only some of its blocks, with its own KV cache.
    No second model to load; its q is `process_logits` (same SamplingParams) on the shallow logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from lmforge.infer.kv_cache import KVCache
from lmforge.infer.sampling import SamplingParams, process_logits


@runtime_checkable
class Drafter(Protocol):
    """Proposes the next tokens of a context.

    propose(context_ids, k) returns up to k tokens and either their draft distributions q, a
    (len(tokens), V) tensor whose row i is the distribution token i was drawn from, or None when the
    proposals are deterministic (q one-hot). A drafter with state may also define
    `begin(params, generator)` (called once per generation, before any proposal) and
    `notify(context_ids)` (called after every verification with the accepted context, to roll back).
    """

    def propose(self, context_ids: list[int], k: int) -> tuple[list[int], torch.Tensor | None]: ...


# ---------------------------------------------------------------------- drafters


class NgramDrafter:
    """Prompt lookup decoding (Saxena 2023): continue the context the way it continued before.

    The last n tokens (n = max_n, then max_n − 1, ... down to min_n) are searched for earlier in the
    context; the tokens that followed their most recent earlier occurrence are proposed. Nothing to run,
    so a miss costs only the extra verification slots.
    """

    def __init__(self, max_n: int = 3, min_n: int = 1, window: int | None = None):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.window = window  # search only the last `window` tokens (None: the whole context)

    def propose(self, context_ids: list[int], k: int) -> tuple[list[int], torch.Tensor | None]:
        ctx = context_ids if self.window is None else context_ids[-self.window :]
        size = len(ctx)
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            tail = ctx[size - n :]
            # latest start first; a match must end before the tail itself starts to have a continuation
            for start in range(size - n - 1, -1, -1):
                if ctx[start : start + n] == tail:
                    return ctx[start + n : start + n + k], None
        return [], None


class LayerSkipDrafter:
    """Self-speculative drafts (Draft & Verify, Zhang et al. 2023; LayerSkip, Elhoushi et al. 2024).

    The target model run through `layers` only (`model(ids, cache=..., layers=layers)`): a shallower
    network whose guesses often agree with the full one. It keeps its own KV cache over the context;
    when the target rejects part of a draft, the cache is cropped back to the longest prefix that is
    still right (`notify`) and the accepted tokens it has not seen are fed on the next `propose`.

    Sampling: each draft token is drawn from q = softmax(process_logits(draft logits)) with the same
    SamplingParams as the target (so a temperature or top-p applies to both); greedy drafts are the
    argmax and report probs=None.

    Default layers: all but a few middle blocks (`default_layers`). Measured on SmolLM2-135M-Instruct
    (greedy, its own outputs, teacher-forced argmax agreement with the full model; bench_speculative.py
    --layers): early exits and "first half + last two" agree on ~0-3% of tokens, every other block on
    ~3%, skipping blocks 10..19 on ~21%, 10..17 on ~28%, 12..15 on ~54%; dropping any single block
    already costs 17-25% (blocks 0, 1, 2 and 11 far more). So the default skips 12..15 (26 of 30 blocks
    run): the best acceptance of the subsets that skip more than one block — but such a draft costs
    ~87% of a target forward per token, so on this small untrained-for-it model it is slower than plain
    decoding; it pays off on deep models trained with early-exit losses (LayerSkip).
    """

    def __init__(self, model, layers: Sequence[int] | None = None):
        n = model.config.n_layers
        layers = list(default_layers(n) if layers is None else layers)
        if not layers or any(not 0 <= i < n for i in layers) or sorted(set(layers)) != layers:
            raise ValueError(f"layers must be increasing, distinct block indices in [0, {n}), got {layers}")
        self.model, self.layers = model, layers
        self.params = SamplingParams(temperature=0)
        self.generator: torch.Generator | None = None
        self.cache: KVCache | None = None
        self.cached: list[int] = []  # the tokens whose keys/values the draft cache holds

    def begin(self, params: SamplingParams, generator: torch.Generator | None) -> None:
        self.params, self.generator = params, generator
        self.cache, self.cached = None, []

    def _ensure_cache(self, need: int) -> KVCache:
        if self.cache is None or self.cache.max_len < need:
            m = self.model
            size = max(need, 2 * (self.cache.max_len if self.cache else 0), 256)
            old, self.cache = self.cache, KVCache(m.config, 1, size, m.embed.weight.dtype, m.device)
            if old is not None and old.length:  # keep what was computed
                self.cache.k[:, :, :, : old.length] = old.k[:, :, :, : old.length]
                self.cache.v[:, :, :, : old.length] = old.v[:, :, :, : old.length]
                self.cache.length = old.length
        return self.cache

    def notify(self, context_ids: list[int]) -> None:
        """Roll back: keep only the cached prefix that agrees with the accepted context."""
        same = 0
        for a, b in zip(self.cached, context_ids):
            if a != b:
                break
            same += 1
        if same < len(self.cached):
            self.cached = self.cached[:same]
            if self.cache is not None:
                self.cache.crop(same)

    def propose(self, context_ids: list[int], k: int) -> tuple[list[int], torch.Tensor | None]:
        if k <= 0 or not context_ids:
            return [], None
        self.notify(context_ids)
        # the last context token is always fed, so there are logits to draft from
        if len(self.cached) == len(context_ids):
            self.cached = self.cached[:-1]
            self.cache.crop(len(self.cached))
        cache = self._ensure_cache(len(context_ids) + k)
        greedy = self.params.temperature == 0
        needs_seen = _uses_seen(self.params)
        device = self.model.device
        feed = torch.tensor([context_ids[len(self.cached) :]], device=device)  # (1, new)
        self.cached = list(context_ids)
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        with torch.inference_mode():
            for i in range(k):
                logits = self.model(feed, cache=cache, logits_to_keep=1, layers=self.layers)[:, -1]  # (1, V)
                seen = torch.tensor([context_ids + tokens], device=device) if needs_seen else None
                logits = process_logits(logits, self.params, seen)
                if greedy:
                    nxt = int(logits.argmax(dim=-1))
                else:
                    q = logits.softmax(dim=-1)  # (1, V)
                    nxt = int(torch.multinomial(q, 1, generator=self.generator))
                    probs.append(q[0])
                tokens.append(nxt)
                if i + 1 < k:  # the last draft needs no keys yet: it is fed on the next propose
                    feed = torch.tensor([[nxt]], device=device)
                    self.cached.append(nxt)
        return tokens, None if greedy else torch.stack(probs)


class ModelDrafter(LayerSkipDrafter):
    """A separate, smaller draft model with the target's vocabulary (Leviathan et al. 2023; Chen et al.
    2023): every block of ``draft``, with its own KV cache, rolled back like LayerSkipDrafter's.

    The natural draft is a student distilled from the target (lmforge.train.distill): trained to match
    the target's next-token distribution, it agrees with the target's choices far more often than an
    independently trained model of its size, and every agreement is a token the target does not decode.
    """

    def __init__(self, draft, target=None):
        if target is not None and draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"the draft's vocabulary has {draft.config.vocab_size} tokens, the target's "
                             f"{target.config.vocab_size}: a draft must share the target's tokenizer")  # fmt: skip
        super().__init__(draft, list(range(draft.config.n_layers)))


def default_layers(n_layers: int) -> list[int]:
    """The default draft blocks: all but ~13% in the middle (SmolLM2's 30: all but 12..15).

    The first and last blocks matter most (measured, see LayerSkipDrafter); models with fewer than 3
    blocks skip none after the first, so the drafter stays valid on tiny test models."""
    skip = max(1, round(n_layers * 0.13))
    start = max(1, (n_layers - skip) // 2 - 1)
    dropped = set(range(start, min(start + skip, n_layers - 1)))
    return [i for i in range(n_layers) if i not in dropped]


# ---------------------------------------------------------------------- verification


def _uses_seen(params: SamplingParams) -> bool:
    """Do the processed logits depend on the tokens seen so far (the penalties)?"""
    return params.repetition_penalty != 1.0 or bool(params.frequency_penalty) or bool(params.presence_penalty)


def target_logits(logits: torch.Tensor, params: SamplingParams, context: list[int], draft: list[int]):
    """Processed logits (k + 1, V) for the rows of one verification forward: row i follows
    context + draft[:i], so penalties see exactly the tokens stream_ids would have seen."""
    if not _uses_seen(params):
        return process_logits(logits, params)
    rows = [
        process_logits(logits[i : i + 1], params, torch.tensor([context + draft[:i]], device=logits.device))
        for i in range(logits.shape[0])
    ]
    return torch.cat(rows)


def verify(
    p_logits: torch.Tensor,
    draft: list[int],
    q: torch.Tensor | None,
    greedy: bool,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Modified rejection sampling over one draft. Returns (accepted, next_token).

    p_logits (k + 1, V): the target's processed logits at every draft position and one past the end;
    draft: the k proposed tokens; q (k, V): their draft distributions, or None for deterministic drafts.
    The first `accepted` drafts are kept and `next_token` follows them: the correction drawn from the
    residual norm(max(0, p − q)) after a rejection, or the bonus token from p_{k+1} if all were kept.
    """
    k = len(draft)
    if greedy:
        best = p_logits.argmax(dim=-1).tolist()  # (k + 1,)
        n = 0
        while n < k and draft[n] == best[n]:
            n += 1
        return n, best[n]
    p = p_logits.softmax(dim=-1)  # (k + 1, V)
    device = p.device
    for i, x in enumerate(draft):
        px = float(p[i, x])
        qx = 1.0 if q is None else float(q[i, x])
        u = float(torch.rand((), generator=generator, device=device))
        if u * qx < px:  # accept with probability min(1, p(x)/q(x)); never when p(x) = 0
            continue
        if q is None:
            residual = p[i].clone()
            residual[x] = 0.0  # max(0, p − onehot(x)): p without the rejected guess
        else:
            residual = (p[i] - q[i]).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:  # p ≤ q everywhere only when p = q (up to rounding)
            residual = p[i]
        token = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
        return i, token
    return k, int(torch.multinomial(p[k], 1, generator=generator))


# ---------------------------------------------------------------------- the decoding loop


def speculative_stream_ids(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None,
    drafter: Drafter,
    eos_ids: set[int] | None = None,
    num_draft: int = 4,
    stats: dict | None = None,
) -> Iterator[int]:
    """Yield new token ids for input_ids (1, T), as `stream_ids` does (same distribution; greedy: the
    same tokens), drafting up to num_draft tokens per target forward. Stops at an end token and
    after max_new_tokens. `stats`, if given, is filled as it goes: drafted, accepted, acceptance_rate,
    target_forwards, tokens.

    The target's cache always holds every token but the last one: each round feeds [last, drafts],
    so its k + 1 logits score every draft and give the token after them.
    """
    params = params or SamplingParams(temperature=0)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(
            f"speculative decoding takes one non-empty prompt (1, T), got {tuple(input_ids.shape)}"
        )
    if num_draft < 1:
        raise ValueError(f"num_draft must be >= 1, got {num_draft}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not callable(getattr(drafter, "propose", None)):
        raise ValueError(f"drafter must have propose(context_ids, k), got {type(drafter).__name__}")
    stats = {} if stats is None else stats
    stats.update(drafted=0, accepted=0, acceptance_rate=0.0, target_forwards=0, tokens=0)
    if max_new_tokens == 0:
        return
    vocab = model.config.vocab_size
    greedy = params.temperature == 0
    context = input_ids[0].tolist()
    device = model.device
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    if hasattr(drafter, "begin"):
        drafter.begin(params, generator)
    cache = KVCache(model.config, 1, len(context) + max_new_tokens + 1, model.embed.weight.dtype, device)
    produced = 0
    with torch.inference_mode():
        if len(context) > 1:  # prefill all but the last prompt token
            model(input_ids[:, :-1], cache=cache, logits_to_keep=1)
            stats["target_forwards"] += 1
        while produced < max_new_tokens:
            # k + 1 tokens may come out of this round; never draft past the limit
            k = min(num_draft, max_new_tokens - produced - 1)
            draft, q = drafter.propose(list(context), k) if k > 0 else ([], None)
            draft = list(draft)
            _check_draft(draft, q, k, vocab)
            if not draft:
                q = None
            feed = torch.tensor([context[-1:] + draft], device=device)  # (1, 1 + k')
            logits = model(feed, cache=cache)[0]  # (1 + k', V)
            stats["target_forwards"] += 1
            p_logits = target_logits(logits, params, context, draft)
            accepted, nxt = verify(p_logits, draft, q, greedy, generator)
            stats["drafted"] += len(draft)
            stats["accepted"] += accepted
            stats["acceptance_rate"] = stats["accepted"] / max(stats["drafted"], 1)
            # keep the last token and the accepted drafts; the new token is the next round's "last"
            cache.crop(len(context) + accepted)
            for token in draft[:accepted] + [nxt]:
                if eos_ids and token in eos_ids:
                    return
                context.append(token)
                produced += 1
                stats["tokens"] = produced
                yield token
            if hasattr(drafter, "notify"):
                drafter.notify(context)


def _check_draft(draft: list[int], q: torch.Tensor | None, k: int, vocab: int) -> None:
    if len(draft) > k:
        raise ValueError(f"the drafter proposed {len(draft)} tokens, at most {k} were asked for")
    if any(not 0 <= t < vocab for t in draft):
        raise ValueError(f"drafted token ids must be in [0, {vocab}), got {draft}")
    if q is not None and draft and tuple(q.shape) != (len(draft), vocab):
        raise ValueError(
            f"draft probs must be (len(tokens), V) = ({len(draft)}, {vocab}), got {tuple(q.shape)}"
        )


def speculative_generate_ids(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None,
    drafter: Drafter,
    eos_ids: set[int] | None = None,
    num_draft: int = 4,
) -> tuple[torch.Tensor, dict]:
    """The new token ids (N,) of speculative_stream_ids, collected, and its stats."""
    stats: dict = {}
    ids = list(
        speculative_stream_ids(model, input_ids, max_new_tokens, params, drafter, eos_ids, num_draft, stats)
    )
    return torch.tensor(ids, dtype=torch.long), stats
