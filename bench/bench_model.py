"""Model benchmark: lmforge's Transformer side by side with Hugging Face transformers, same GGUF weights.

What is compared (each section prints a Markdown table; ratios are ours / HF):

1. Loading a GGUF file: `lmforge.model.weights.load_gguf(path)` vs
   `AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)`, for
   SmolLM2-135M-Instruct (Q4_1) and Gemma 3 270M (Q4_K_M). Every load is a fresh `python` subprocess
   (the two loaders interleaved), so each gets a cold process, its own imports and its own peak RSS
   (ru_maxrss). Reported: the load call alone (imports excluded, timed apart), the peak RSS, and the
   max |Δ logit| between the two loaders' models on a fixed 16-token input (same weights → ~0).
2. Forward throughput of SmolLM2-135M on 512 tokens of tinyshakespeare, as 1 × 512 and 4 × 128, in
   float32 and bfloat16 (both models cast with `.to(torch.bfloat16)`), under `torch.inference_mode()` on
   2 threads (--threads): ours `model(ids)` vs HF `hf(input_ids=ids).logits`. One warm-up each, then
   --repeats timed forwards, ours and HF alternating (and alternating which goes first) so machine
   noise hits both alike; tokens/s from the median time, plus the median of the per-pair ratios and
   the ratio of the best runs. The logits are checked: float32 max |Δ| ≤ 1e-3; for bfloat16 the max
   |Δ| and the top-1 agreement are reported.
3. A summary against the goals: our GGUF load under 3 s, our forward ≥ 1.0× HF.

With --profile, one bfloat16 1 × 512 forward of each model is run under torch.profiler and the top
operators by self CPU time are printed.

The machine may be shared: the load average is printed at the start and the end; read the ratios
(and the paired ratios) rather than the absolute numbers.

    python bench/bench_model.py                        # full run, about 6 minutes on 2 idle cores
    python bench/bench_model.py --quick --profile      # smoke run (3 min): 1 load each, 3 forwards, no Gemma
    python bench/bench_model.py --repeats 9 --out bench/out | tee bench/out/model.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, data_dir, load_line, md_table, median  # noqa: E402

MODELS = {"SmolLM2-135M-Instruct": "smollm2-135m-instruct", "Gemma 3 270M": "gemma3-270m"}
PROBE_IDS = [2, 504, 3458, 314, 260, 1345, 28, 355, 8125, 1127, 30, 1044, 288, 1790, 3005, 11]
LOAD_GOAL_S = 3.0
SPEED_GOAL = 1.0

# transformers' GGUF loader draws tqdm bars and logs; keep the children quiet
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


# ---------------------------------------------------------------------- helpers


# ---------------------------------------------------------------------- 1. loading (child processes)
def load_child(loader: str, name: str, probe_out: str) -> None:
    """Runs in a fresh process: time the imports and the load, report JSON on stdout."""
    t0 = time.perf_counter()
    import torch

    from lmforge.registry import resolve

    if loader == "ours":
        from lmforge.model.weights import load_gguf

        def load(path):
            return load_gguf(path)
    else:
        import transformers

        transformers.logging.set_verbosity_error()

        def load(path):
            return transformers.AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )

    path = resolve(name)
    t1 = time.perf_counter()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = load(path)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the probe forward below
    with torch.inference_mode():
        ids = torch.tensor([PROBE_IDS])
        logits = model(ids) if loader == "ours" else model(input_ids=ids).logits
    torch.save(logits.float(), probe_out)
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "rss_before_mb": rss_before, "peak_mb": peak}))


def run_load_child(loader: str, name: str, probe_out: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_load-child", loader, name, probe_out]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{loader} load of {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_load(models: dict[str, str], repeats: int) -> tuple[str, dict]:
    import torch

    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, name in models.items():
            runs: dict[str, list[dict]] = {"ours": [], "hf": []}
            for r in range(repeats):
                order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
                for loader in order:
                    runs[loader].append(run_load_child(loader, name, f"{tmp}/{loader}.pt"))
                    print(
                        f"  load {label} {loader} #{r + 1}: {runs[loader][-1]['load_s']:.2f} s",
                        file=sys.stderr,
                    )
            diff = (
                (
                    torch.load(f"{tmp}/ours.pt", weights_only=True)
                    - torch.load(f"{tmp}/hf.pt", weights_only=True)
                )
                .abs()
                .max()
                .item()
            )
            med = {k: {f: median([x[f] for x in v]) for f in v[0]} for k, v in runs.items()}
            o, h = med["ours"], med["hf"]
            summary[label] = med
            rows.append(
                [label, o["load_s"], h["load_s"], o["load_s"] / h["load_s"], o["import_s"], h["import_s"],
                 o["peak_mb"], h["peak_mb"], o["peak_mb"] / h["peak_mb"], f"{diff:.1e}"]
            )  # fmt: skip
    headers = [
        "model", "ours load s", "HF load s", "ours/HF time", "ours import s", "HF import s",
        "ours peak MB", "HF peak MB", "ours/HF RSS", "max abs Δ logits",
    ]  # fmt: skip
    text = (
        f"## 1. GGUF load (fresh process per load, median of {repeats})\n\n"
        "Load = the load call only; imports (torch, lmforge / transformers) are timed apart. "
        "Peak = ru_maxrss of the child right after the load (baseline after imports ≈ "
        f"{median([m['ours']['rss_before_mb'] for m in summary.values()]):.0f} MB ours, "
        f"{median([m['hf']['rss_before_mb'] for m in summary.values()]):.0f} MB HF). "
        "Δ logits: both loaders' models on the same 16 tokens, float32.\n\n" + md_table(headers, rows)
    )
    return text, summary


# ---------------------------------------------------------------------- 2. forward throughput
def sample_ids(n: int, vocab: int):
    """n tokens of tinyshakespeare with SmolLM2's tokenizer (random ids if the shared data is missing)."""
    import torch

    corpus = data_dir() / "text" / "tinyshakespeare.txt"
    if corpus.is_file():
        from lmforge.tokenizer import load_tokenizer

        tok = load_tokenizer(MODELS["SmolLM2-135M-Instruct"])
        ids = tok.encode(corpus.read_text(encoding="utf-8")[: 8 * n])[:n]
        if len(ids) == n:
            return torch.tensor(ids), "tinyshakespeare"
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0)), "random ids"


def time_pair(ours, hf, ids, repeats: int) -> tuple[list[float], list[float]]:
    """Warm up once each, then `repeats` forwards of each, alternating (and alternating who goes first)."""
    import torch

    def run_ours():
        return ours(ids)

    def run_hf():
        return hf(input_ids=ids).logits

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    with torch.inference_mode():
        run_ours(), run_hf()
        for r in range(repeats):
            order = (("ours", run_ours), ("hf", run_hf))
            for key, fn in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
    return times["ours"], times["hf"]


def check_logits(ours, hf, ids) -> tuple[float, float]:
    """Max |Δ logit| and top-1 agreement (%) between the two models on ids."""
    import torch

    with torch.inference_mode():
        a, b = ours(ids).float(), hf(input_ids=ids).logits.float()
    return (a - b).abs().max().item(), 100.0 * (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def bench_forward(repeats: int, quick: bool, profile: bool, threads: int) -> tuple[str, list[dict]]:
    import torch
    import transformers

    from lmforge.model.weights import load_gguf
    from lmforge.registry import resolve

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    path = resolve(MODELS["SmolLM2-135M-Instruct"])
    ours = load_gguf(path).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokens, source = sample_ids(512, ours.config.vocab_size)
    shapes = [(1, 512)] if quick else [(1, 512), (4, 128)]
    dtypes = [torch.float32, torch.bfloat16]
    results, rows = [], []
    for dtype in dtypes:  # float32 first: casting to bfloat16 is one-way
        ours.to(dtype), hf.to(dtype)
        for b, t in shapes:
            ids = tokens.reshape(b, t)
            diff, top1 = check_logits(ours, hf, ids)
            t_ours, t_hf = time_pair(ours, hf, ids, repeats)
            n = b * t
            res = {
                "dtype": str(dtype).removeprefix("torch."), "shape": f"{b} × {t}",
                "ours": n / median(t_ours), "hf": n / median(t_hf),
                "paired": median([h / o for o, h in zip(t_ours, t_hf)]),
                "best": min(t_hf) / min(t_ours),
                "spread": (max(t_ours) / min(t_ours), max(t_hf) / min(t_hf)),
                "diff": diff, "top1": top1,
            }  # fmt: skip
            res["ratio"] = res["ours"] / res["hf"]
            if dtype == torch.float32:
                check = f"max Δ {diff:.1e} {'✓' if diff <= 1e-3 else '✗ > 1e-3'}"
            else:
                check = f"max Δ {diff:.2f}, top-1 {top1:.1f}%"
            results.append(res)
            rows.append(
                [res["dtype"], res["shape"], res["ours"], res["hf"], res["ratio"], res["paired"], res["best"],
                 f"{res['spread'][0]:.2f} / {res['spread'][1]:.2f}", check]
            )  # fmt: skip
            print(f"  forward {res['dtype']} {res['shape']}: ratio {res['ratio']:.2f}", file=sys.stderr)
    headers = [
        "dtype", "shape", "ours tok/s", "HF tok/s", "ratio ours/HF", "paired ratio (median)",
        "best-of-N ratio", "max/min time ours / HF", "logits",
    ]  # fmt: skip
    text = (
        f"## 2. Forward throughput, SmolLM2-135M "
        f"(median of {repeats}, {threads} thread(s), inference_mode)\n\n"
        f"Input: 512 tokens of {source}, reshaped to the batch shape. tok/s from the median time. Paired "
        "ratio: median over repeats of HF time / our time for back-to-back runs. Best-of-N: HF's fastest "
        "run / our fastest (the least disturbed by other processes). max/min: spread of the timed runs "
        "(1.00 = no noise; on a busy 2-core machine 2 OpenMP threads stall whenever one is descheduled).\n\n"
        + md_table(headers, rows)
    )
    if profile:
        text += "\n\n" + profile_forward(ours, hf, tokens.reshape(1, 512))
    return text, results


def profile_forward(ours, hf, ids) -> str:
    """Top operators by self CPU time for one forward of each model (in their current dtype)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    dtype = str(ours.embed.weight.dtype).removeprefix("torch.")
    out = [f"### Profile: one {dtype} forward of {ids.shape[0]} × {ids.shape[1]} tokens (self CPU time)"]
    with torch.inference_mode():
        for label, fn in (("ours", lambda: ours(ids)), ("HF", lambda: hf(input_ids=ids).logits)):
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
            out.append(f"\n{label}:\n\n```\n{table}\n```")
    return "\n".join(out)


# ---------------------------------------------------------------------- 3. summary
def summarize(load: dict, fwd: list[dict]) -> str:
    lines = ["## 3. Summary\n"]
    for label, med in load.items():
        s = med["ours"]["load_s"]
        verdict = "meets" if s < LOAD_GOAL_S else "misses"
        lines.append(
            f"- Load {label}: ours {s:.2f} s vs HF {med['hf']['load_s']:.2f} s "
            f"({med['hf']['load_s'] / s:.1f}× faster), peak RSS {med['ours']['peak_mb']:.0f} vs "
            f"{med['hf']['peak_mb']:.0f} MB; {verdict} the < {LOAD_GOAL_S:.0f} s goal "
            f"(+ {med['ours']['import_s']:.2f} s of imports)."
        )
    for r in fwd:
        verdict = "meets" if r["ratio"] >= SPEED_GOAL else "misses"
        lines.append(
            f"- Forward {r['dtype']} {r['shape']}: {r['ours']:,.0f} vs {r['hf']:,.0f} tok/s, "
            f"ratio {r['ratio']:.2f} (paired {r['paired']:.2f}, best-of-N {r['best']:.2f}); "
            f"{verdict} the ≥ {SPEED_GOAL:.1f}× goal."
        )
    f32 = [r for r in fwd if r["dtype"] == "float32"]
    if f32:
        worst = max(r["diff"] for r in f32)
        lines.append(
            f"- float32 logits agree with HF: max |Δ| {worst:.1e} ({'≤' if worst <= 1e-3 else '>'} 1e-3)."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_load-child":
        load_child(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 load each, SmolLM2 only, 3 forwards")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where model.json goes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the forwards (default 2)")
    ap.add_argument("--profile", action="store_true", help="also profile one bf16 forward of each model")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    load_repeats = 1 if args.quick else args.repeats
    fwd_repeats = min(args.repeats, 3) if args.quick else args.repeats
    models = dict(list(MODELS.items())[:1]) if args.quick else MODELS
    print("# lmforge vs Hugging Face transformers: loading and forward\n")
    print(
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), transformers "
        f"{transformers.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} cores.\n"
    )
    print(load_line("start") + "\n")
    started = time.perf_counter()
    load_text, load = bench_load(models, load_repeats)
    print(load_text + "\n", flush=True)
    fwd_text, fwd = bench_forward(fwd_repeats, args.quick, args.profile, args.threads)
    print(fwd_text + "\n", flush=True)
    print(summarize(load, fwd) + "\n")
    print(load_line("end") + f" Total {time.perf_counter() - started:.0f} s.")
    (args.out / "model.json").write_text(
        json.dumps({"load": load, "forward": fwd}, indent=1), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
