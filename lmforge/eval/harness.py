"""The harness: tasks → requests → the model → per-row scores → metrics with standard errors.

One loop serves every task kind (lmforge.eval.tasks): a row becomes log-likelihood requests (a context
and its continuations) or a generation request; requests already in the cache are not recomputed, new
ones are scored in chunks and written to the cache as they finish, so an interrupted run resumes where it
stopped and a rerun with more tasks only computes what is new.

Metrics, as lm-evaluation-harness defines them:
  acc        1 if the right choice has the highest Σ log p
  acc_norm   the same after dividing each Σ log p by the choice's length in characters (without the
             delimiter): long answers are not penalised for having more tokens to be unlikely on
  perplexity (LAMBADA) exp(-mean Σ log p of the last word)
  word/byte perplexity, bits per byte (WikiText): see lmforge.eval.perplexity
Standard errors: for a mean of per-row scores, the sample standard deviation / √n (lm-eval's
mean_stderr; for 0/1 scores the binomial error); for corpus-level numbers (perplexities) the standard
deviation of 1,000 bootstrap resamples of the rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.eval.loglik import Group, LogLikelihood, Scored, encode_pair
from lmforge.eval.tasks import FEWSHOT_SEED, Task, read_rows

CHUNK = 64  # groups scored (and cached) at a time: an interrupt loses at most this much work


class Cache:
    """request hash → result, in SQLite (one file, safe to interrupt: each chunk is one transaction)."""

    def __init__(self, path: str | Path | None):
        self.db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path))
            self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT)")

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        if self.db is None or not keys:
            return {}
        out = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of ? in one statement
            part = keys[i : i + 500]
            q = f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(part))})"
            out.update({k: json.loads(v) for k, v in self.db.execute(q, part)})
        return out

    def put_many(self, items: dict[str, Any]) -> None:
        if self.db is None or not items:
            return
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()]
            )


def _key(fingerprint: str, *parts: Any) -> str:
    return hashlib.sha256(json.dumps([fingerprint, *parts]).encode()).hexdigest()


@dataclass
class Evaluator:
    """A model (lmforge.model.transformer.Transformer with .tokenizer) and how to run it."""

    model: Any
    fingerprint: str = ""  # identifies model + dtype in the cache; "" with cache None
    cache: Cache = field(default_factory=lambda: Cache(None))
    row_len: int = 512
    rows_per_batch: int = 2
    gen_batch: int = 8
    max_len: int | None = None
    chat: bool = False  # wrap each prompt in the model's chat template
    progress: bool = True

    def __post_init__(self) -> None:
        self.tok = getattr(self.model, "tokenizer", None)
        if self.tok is None:
            raise ValueError(
                "the model has no tokenizer (load it with lmforge.load_model from a .gguf or folder)"
            )
        if self.chat and not getattr(self.tok, "chat_template", None):
            raise ValueError("--chat-template was asked for, but this model's tokenizer has no chat template")
        self.scorer = LogLikelihood(self.model, self.max_len, self.row_len, self.rows_per_batch)
        self.add_bos = bool(getattr(self.tok, "add_bos", False)) and not self.chat

    # -- prompts --------------------------------------------------------------------------------------
    def _context(self, task: Task, prefix: str, text: str) -> str:
        if not self.chat:
            return prefix + text
        return self.tok.apply_chat_template(
            [{"role": "user", "content": prefix + text}], add_generation_prompt=True
        )

    def _delim(self, task: Task) -> str:
        # after a chat template the answer opens the assistant's turn: no leading space
        return "" if self.chat else task.target_delimiter

    # -- scoring --------------------------------------------------------------------------------------
    def _score(self, groups: list[Group], desc: str) -> list[list[Scored]]:
        keys = [[_key(self.fingerprint, g.context, c) for c in g.continuations] for g in groups]
        cached = self.cache.get_many([k for ks in keys for k in ks])
        todo = [i for i, ks in enumerate(keys) if not all(k in cached for k in ks)]
        bar = _bar(len(groups), desc, self.progress)
        bar.update(len(groups) - len(todo))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            scored = self.scorer.score([groups[i] for i in chunk])
            new = {
                keys[i][k]: [s.logprob, s.greedy, s.n_tokens]
                for i, res in zip(chunk, scored)
                for k, s in enumerate(res)
            }
            self.cache.put_many(new)
            cached.update(new)
            bar.update(len(chunk))
        bar.close()
        return [[Scored(*cached[k]) for k in ks] for ks in keys]

    def run(self, task: Task, data_dir: Path, limit: int | None = None, num_fewshot: int | None = None,
            on_bad_row: str = "fail", seed: int = FEWSHOT_SEED) -> dict[str, Any]:  # fmt: skip
        """Evaluate one task: its metrics, their standard errors, the row count and the time taken."""
        t0 = time.perf_counter()
        path = _data_path(task.data, data_dir)
        loaded = read_rows(task, path, on_bad_row)
        rows = loaded.rows[:limit] if limit else loaded.rows
        k = task.num_fewshot if num_fewshot is None else num_fewshot
        if k and task.kind == "perplexity":
            raise ValueError(f"task {task.name!r} is a perplexity task: it takes no few-shot examples")
        pool = rows
        if k and task.fewshot_data:
            pool = read_rows(task, _data_path(task.fewshot_data, data_dir), on_bad_row).rows
        elif k:
            pool = loaded.rows
        if task.kind == "perplexity":
            per_row, metrics = self._perplexity(task, rows)
        elif task.kind == "generate":
            per_row, metrics = self._generate(task, rows, pool, k, seed)
        else:
            per_row, metrics = self._loglik(task, rows, pool, k, seed)
        return {"task": task.name, "kind": task.kind, "group": task.group, "n": len(rows),
                "skipped": loaded.skipped, "num_fewshot": k, "metrics": metrics,
                "seconds": round(time.perf_counter() - t0, 2), "rows": per_row}  # fmt: skip

    def _loglik(self, task: Task, rows: list[dict], pool: list[dict], k: int, seed: int):
        groups, meta = [], []
        rnd = random.Random(seed)  # one generator for the task, advanced row by row, as lm-eval's sampler
        for row in rows:
            r = task.render(row)
            prefix = task.fewshot_prefix(row, pool, k, rnd)
            if task.kind == "partial":  # one context per option, the same continuation
                start = len(groups)
                for ctx in r["choices"]:
                    c, cont = encode_pair(
                        self.tok,
                        self._context(task, prefix, ctx),
                        self._delim(task) + r["continuation"],
                        self.add_bos,
                    )
                    groups.append(Group(c, [cont]))
                meta.append((start, len(r["choices"]), r))
            elif task.kind == "lambada":
                c, cont = encode_pair(
                    self.tok,
                    self._context(task, prefix, r["text"]),
                    self._delim(task) + r["continuation"],
                    self.add_bos,
                )
                meta.append((len(groups), 1, r))
                groups.append(Group(c, [cont]))
            else:
                context = self._context(task, prefix, r["text"])
                pairs = [
                    encode_pair(self.tok, context, self._delim(task) + ch, self.add_bos)
                    for ch in r["choices"]
                ]
                meta.append((len(groups), 1, r))
                groups.append(Group(pairs[0][0], [p[1] for p in pairs]))
        scored = self._score(groups, task.name)
        per_row = []
        for start, n, r in meta:
            if task.kind == "lambada":
                s = scored[start][0]
                per_row.append({"acc": float(s.greedy), "loglik": s.logprob})
                continue
            lls = (
                [scored[start + j][0].logprob for j in range(n)]
                if task.kind == "partial"
                else [s.logprob for s in scored[start]]
            )
            best = max(range(len(lls)), key=lambda j: lls[j])
            out = {"acc": float(best == r["gold"]), "logliks": lls, "gold": r["gold"]}
            if "acc_norm" in task.metrics:
                norm = [ll / len(ch) for ll, ch in zip(lls, r["choices"])]
                out["acc_norm"] = float(max(range(len(norm)), key=lambda j: norm[j]) == r["gold"])
            per_row.append(out)
        metrics: dict[str, float] = {}
        for m in task.metrics:
            if m == "perplexity":
                lls = [p["loglik"] for p in per_row]
                metrics[m] = math.exp(-sum(lls) / len(lls))
                metrics[m + "_stderr"] = _bootstrap(lls, lambda xs: math.exp(-sum(xs) / len(xs)))
            else:
                metrics[m], metrics[m + "_stderr"] = _mean_stderr([p[m] for p in per_row])
        return per_row, metrics

    def _perplexity(self, task: Task, rows: list[dict]):
        from lmforge.eval.perplexity import document_logliks, wikitext_detokenize

        originals = [task.render(r)["text"] for r in rows]
        texts = [wikitext_detokenize(d) for d in originals] if task.name == "wikitext" else originals
        bar = _bar(len(texts), task.name, self.progress)
        per_doc = document_logliks(self.scorer, self.tok, texts, self.max_len, progress=bar.update)
        bar.close()
        per_row = [{"loglik": lp, "tokens": n, "words": len(re.split(r"\s+", d)), "bytes": len(d.encode("utf-8"))}
                   for (lp, n), d in zip(per_doc, originals)]  # fmt: skip
        fns = {
            "word_perplexity": lambda rs: math.exp(
                -sum(r["loglik"] for r in rs) / sum(r["words"] for r in rs)
            ),
            "byte_perplexity": lambda rs: math.exp(
                -sum(r["loglik"] for r in rs) / sum(r["bytes"] for r in rs)
            ),
            "bits_per_byte": lambda rs: (
                -sum(r["loglik"] for r in rs) / sum(r["bytes"] for r in rs) / math.log(2)
            ),
            "token_perplexity": lambda rs: math.exp(
                -sum(r["loglik"] for r in rs) / sum(r["tokens"] for r in rs)
            ),
        }
        metrics = {}
        for m in (*task.metrics, "token_perplexity"):
            metrics[m] = fns[m](per_row)
            metrics[m + "_stderr"] = _bootstrap(per_row, fns[m])
        metrics["max_len"] = self.scorer.max_len
        return per_row, metrics

    def _generate(self, task: Task, rows: list[dict], pool: list[dict], k: int, seed: int):
        from lmforge.eval import generative

        rnd = random.Random(seed)  # one generator for the task, advanced row by row, as lm-eval's sampler
        prompts = [self._context(task, task.fewshot_prefix(row, pool, k, rnd), task.render(row)["text"])
                   for row in rows]  # fmt: skip
        outputs = self._generations(task, prompts)
        per_row = []
        if task.scorer == "gsm8k":
            for row, out in zip(rows, outputs):
                target = generative.gsm8k_target(row["answer"])
                got = generative.extract_gsm8k(out)
                per_row.append({"output": out, "target": target,
                                "exact_match_strict": float(generative.gsm8k_exact_match(got["strict"], target)),
                                "exact_match_flexible": float(generative.gsm8k_exact_match(got["flexible"], target))})  # fmt: skip
        elif task.scorer == "triviaqa":
            for row, out in zip(rows, outputs):
                aliases = task.render(row)["gold"]
                per_row.append({"output": out, "exact_match": float(generative.triviaqa_em(out, aliases))})
        elif task.scorer == "humaneval":
            from lmforge.eval.sandbox import run_many

            programs = [generative.humaneval_program(row, out) for row, out in zip(rows, outputs)]
            for out, res in zip(outputs, run_many(programs, timeout=10.0, memory_mb=1024)):
                per_row.append({"output": out, "pass@1": float(res.passed), "status": res.status})
        else:
            raise ValueError(
                f"task {task.name!r}: unknown scorer {task.scorer!r} (gsm8k, triviaqa or humaneval)"
            )
        metrics = {}
        for m in task.metrics:
            metrics[m], metrics[m + "_stderr"] = _mean_stderr([p[m] for p in per_row])
        return per_row, metrics

    def _generations(self, task: Task, prompts: list[str]) -> list[str]:
        """Greedy completions cut at the task's first stop string, cached like the scores."""
        from lmforge.infer.generate import batch_generate_ids, end_ids

        ids = [([self.tok.bos_id] if self.add_bos else []) + self.tok.encode(p) for p in prompts]
        max_prompt = self.scorer.max_len - task.max_tokens
        ids = [p[-max_prompt:] for p in ids]  # keep the end of an over-long prompt, as lm-eval does
        keys = [_key(self.fingerprint, "generate", p, task.until, task.max_tokens) for p in ids]
        cached = self.cache.get_many(keys)
        todo = sorted((i for i, k in enumerate(keys) if k not in cached), key=lambda i: -len(ids[i]))
        bar = _bar(len(prompts), task.name, self.progress)
        bar.update(len(prompts) - len(todo))
        stops = [s for s in task.until if s]
        for start in range(0, len(todo), self.gen_batch):
            chunk = todo[start : start + self.gen_batch]

            def stopped(row: int, new: list[int]) -> bool:
                tail = self.tok.decode(new[-16:])  # a stop string shows in the last few tokens
                return any(s in tail for s in stops)

            outs = batch_generate_ids(self.model, [ids[i] for i in chunk], task.max_tokens,
                                      eos_ids=end_ids(self.tok), until=stopped if stops else None)  # fmt: skip
            new = {keys[i]: cut_at_stops(self.tok.decode(o), stops) for i, o in zip(chunk, outs)}
            self.cache.put_many(new)
            cached.update(new)
            bar.update(len(chunk))
        bar.close()
        return [cached[k] for k in keys]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (lm-eval's `until`)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _data_path(data: str, data_dir: Path) -> Path:
    p = Path(data)
    return p if p.is_absolute() else data_dir / p


def _mean_stderr(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        raise ValueError("no rows to score")
    mean = sum(xs) / n
    if n < 2:
        return mean, float("nan")
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def _bootstrap(rows: Sequence, fn, iters: int = 1000, seed: int = 1234) -> float:
    """Standard deviation of fn over resamples of the rows with replacement (lm-eval bootstraps too)."""
    if len(rows) < 2:
        return float("nan")
    rng = random.Random(seed)
    vals = [fn(rng.choices(rows, k=len(rows))) for _ in range(iters)]
    mean = sum(vals) / iters
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (iters - 1))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, show: bool):
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", leave=False)


def group_averages(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Macro averages of tasks that share a group (MMLU: the mean over subjects, each counted once)."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("group"):
            groups.setdefault(r["group"], []).append(r)
    out = []
    for name, members in groups.items():
        if len(members) < 2:
            continue
        metrics: dict[str, float] = {}
        for m in members[0]["metrics"]:
            if m.endswith("_stderr"):
                continue
            vals = [r["metrics"][m] for r in members]
            metrics[m] = sum(vals) / len(vals)
            errs = [r["metrics"][m + "_stderr"] for r in members]
            metrics[m + "_stderr"] = math.sqrt(sum(e * e for e in errs)) / len(errs)  # independent subjects
        out.append({"task": name, "kind": "group", "group": None, "n": sum(r["n"] for r in members),
                    "skipped": sum(r["skipped"] for r in members), "num_fewshot": members[0]["num_fewshot"],
                    "metrics": metrics, "seconds": round(sum(r["seconds"] for r in members), 2),
                    "subjects": len(members)})  # fmt: skip
    return out
