"""Tokenizer benchmark: lmforge's byte-level BPE side by side with the field's tools.

What is compared (each section prints a Markdown table; ratios are ours / theirs unless said otherwise):

1. Training: `lmforge.tokenizer.train_bpe` vs Hugging Face `tokenizers`' BpeTrainer (byte-level, same
   GPT-2 regex, same special token) on tinyshakespeare → 1,024 and the 13 Gutenberg books → 8,192 and
   32,768. Every run is a fresh subprocess, so Hugging Face's rayon pool can be pinned to 1 or 2
   threads (RAYON_NUM_THREADS is read when the pool starts) and the peak RSS of each run is its own
   (ru_maxrss of the process and of its forked pre-tokenization workers). A plainly written pure-Python
   BPE (recount every pair after every merge) is the "naive" baseline; its merges are checked against ours.
2. Encoding throughput with the GPT-2 vocabulary on the Gutenberg text: tiktoken, Hugging Face
   tokenizers and ours (cold = fresh per-piece cache, warm = second pass), single thread and batched over
   paragraphs on 2 threads/processes. Our ids are asserted equal to tiktoken's.
3. Compression (UTF-8 bytes per token) on the shared corpora: ours trained on Gutenberg at several
   vocabulary sizes vs GPT-2, cl100k_base, o200k_base and SmolLM2; plot in <out>/compression.png.
4. A summary of the key ratios against the goals (training ≤ 2× HF wall time, encoding ≥ 0.5× tiktoken).

Timings are medians over --repeats runs (the tools interleaved, so machine noise hits them alike).
Everything runs offline from the shared data folder: $LMFORGE_DATA, else ../shared/data beside the repo.

    python bench/bench_tokenizer.py                  # full run, about 4 minutes on 2 cores
    python bench/bench_tokenizer.py --quick          # smoke run, under 2 minutes
    python bench/bench_tokenizer.py --repeats 9 --out bench/out | tee bench/out/tokenizer.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, data_dir, md_table, median, peak_rss_mb  # noqa: E402

SPECIAL = "<|endoftext|>"
MB = 1e6  # throughput is in MB/s of UTF-8 text, 1 MB = 10^6 bytes

# tiktoken looks for its files in TIKTOKEN_CACHE_DIR under the SHA-1 of their download URL.
TIKTOKEN_CACHE_NAMES = {
    "tokenizers/gpt2_openai/vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "tokenizers/gpt2_openai/encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
    "tokenizers/tiktoken/cl100k_base.tiktoken": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "tokenizers/tiktoken/o200k_base.tiktoken": "fb374d419588a4632f3f557e76b4b70aebbca790",
}


# ---------------------------------------------------------------------- helpers


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def setup_tiktoken(tmp: Path) -> None:
    cache = tmp / "tiktoken_cache"
    cache.mkdir(exist_ok=True)
    for rel, name in TIKTOKEN_CACHE_NAMES.items():
        (cache / name).symlink_to(data_dir() / rel)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def load_corpora(tmp: Path) -> tuple[dict[str, str], Path]:
    """All the shared corpora as str, and the Gutenberg books concatenated into one UTF-8 file.

    Two of the books hold a few bytes that are not UTF-8 (Latin-1 accents); Hugging Face's trainer
    refuses such a file, so the concatenation is decoded with errors="replace" and both trainers read
    that same clean file.
    """
    text_dir = data_dir() / "text"
    books = sorted((text_dir / "gutenberg").glob("*.txt"))
    gutenberg = b"".join(p.read_bytes() for p in books).decode("utf-8", errors="replace")
    gutenberg_path = tmp / "gutenberg.txt"
    gutenberg_path.write_text(gutenberg, encoding="utf-8")

    def read(rel: str) -> str:
        return (text_dir / rel).read_bytes().decode("utf-8", errors="replace")

    c4 = [json.loads(line)["text"] for line in read("c4_demo.jsonl").splitlines() if line.strip()]
    corpora = {
        "tinyshakespeare": read("tinyshakespeare.txt"),
        "gutenberg": gutenberg,
        "tinystories": read("tinystories_val_subset.txt"),
        "wiki_demo": read("wiki_demo.txt"),
        "wikitext2 test": read("wikitext2_raw/wiki.test.raw"),
        "c4_demo": "\n\n".join(c4),
    }
    return corpora, gutenberg_path


def _spin(n: int) -> None:
    total = 0
    for i in range(n):
        total += i


def parallel_speedup(n: int = 5_000_000) -> float:
    """How much faster 2 CPU-bound processes finish 2 units of work than 1 process does 1 unit, ×2.

    2.0 means two real cores; about 1.0 means the "2 cores" give one core's throughput (shared host).
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")

    def run(k: int) -> float:
        procs = [ctx.Process(target=_spin, args=(n,)) for _ in range(k)]
        t = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return time.perf_counter() - t

    one = median([run(1) for _ in range(3)])
    two = median([run(2) for _ in range(3)])
    return 2 * one / two


# ---------------------------------------------------------------------- 1. training
def naive_bpe(text: str, vocab_size: int, special: str) -> list[tuple[bytes, bytes]]:
    """Textbook BPE: after every merge, recount every pair of every distinct word from scratch."""
    import regex

    from lmforge.tokenizer import GPT2_PATTERN

    pattern = regex.compile(GPT2_PATTERN)
    word_counts: Counter = Counter()
    for part in text.split(special):
        word_counts.update(pattern.findall(part))
    words = [(tuple(bytes([b]) for b in w.encode("utf-8")), c) for w, c in word_counts.items()]
    merges = []
    for _ in range(vocab_size - 256 - 1):  # the base vocabulary: 256 bytes + the special token
        pairs: Counter = Counter()
        for symbols, c in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += c
        if not pairs:
            break
        a, b = best = max(pairs, key=lambda p: (pairs[p], p))  # ties: the greatest pair of byte strings
        merges.append(best)
        merged = []
        for symbols, c in words:
            out, i, n = [], 0, len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == a and symbols[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged.append((tuple(out), c))
        words = merged
    return merges


def train_worker(spec: dict) -> dict:
    """Runs in a fresh subprocess: one training run, its time and this process tree's peak RSS."""
    base_rss = peak_rss_mb(resource.RUSAGE_SELF)
    extra = {}
    if spec["tool"] == "ours":
        from lmforge.tokenizer import train_bpe

        base_rss = peak_rss_mb(resource.RUSAGE_SELF)
        seconds, _ = timed(
            train_bpe, spec["path"], spec["vocab"], [SPECIAL], num_workers=spec["workers"], progress=False
        )
    elif spec["tool"] == "hf":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        base_rss = peak_rss_mb(resource.RUSAGE_SELF)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=spec["vocab"],
            special_tokens=[SPECIAL],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        seconds, _ = timed(tok.train, [spec["path"]], trainer)
        extra["vocab_size"] = tok.get_vocab_size()
    else:  # naive
        text = Path(spec["path"]).read_text(encoding="utf-8")
        seconds, merges = timed(naive_bpe, text, spec["vocab"], SPECIAL)
    result = {
        "seconds": seconds,
        "rss_self_mb": peak_rss_mb(resource.RUSAGE_SELF),
        "rss_children_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
        "rss_base_mb": base_rss,
        **extra,
    }
    if spec["tool"] == "naive":  # after the RSS reading: check that naive and ours learn the same merges
        from lmforge.tokenizer import train_bpe

        result["same_as_ours"] = merges == train_bpe(spec["path"], spec["vocab"], [SPECIAL])[1]
    return result


def run_train(tool: str, path: Path, vocab: int, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if tool == "hf":
        env.update(RAYON_NUM_THREADS=str(workers), TOKENIZERS_PARALLELISM="true" if workers > 1 else "false")
    spec = {"tool": tool, "path": str(path), "vocab": vocab, "workers": workers}
    proc = subprocess.run(
        [sys.executable, __file__, "--train-worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training worker {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_training(shakespeare: Path, gutenberg: Path, repeats: int) -> dict:
    configs = [
        ("tinyshakespeare", shakespeare, 1024),
        ("gutenberg", gutenberg, 8192),
        ("gutenberg", gutenberg, 32768),
    ]
    variants = [("ours", 2), ("ours", 1), ("hf", 1), ("hf", 2)]
    runs: dict = {(c[0], c[2], v): [] for c in configs for v in variants}
    for _ in range(repeats):  # interleaved: drift in machine load hits every tool alike
        for name, path, vocab in configs:
            for tool, workers in variants:
                runs[(name, vocab, (tool, workers))].append(run_train(tool, path, vocab, workers))

    def sec(name, vocab, variant):
        return median([r["seconds"] for r in runs[(name, vocab, variant)]])

    def rss(name, vocab, variant, key):
        return max(r[key] for r in runs[(name, vocab, variant)])

    rows, summary = [], {}
    for name, _, vocab in configs:
        o2, o1 = sec(name, vocab, ("ours", 2)), sec(name, vocab, ("ours", 1))
        h1, h2 = sec(name, vocab, ("hf", 1)), sec(name, vocab, ("hf", 2))
        summary[(name, vocab)] = (o2 / h2, o1 / h1, o2 / h1)
        rows.append(
            [
                name,
                vocab,
                o2,
                o1,
                h1,
                h2,
                f"{o2 / h2:.2f}×",
                f"{o1 / h1:.2f}×",
                f"{rss(name, vocab, ('ours', 2), 'rss_self_mb'):.0f} / "
                f"{rss(name, vocab, ('ours', 2), 'rss_children_mb'):.0f}",
                f"{rss(name, vocab, ('ours', 1), 'rss_self_mb'):.0f}",
                f"{rss(name, vocab, ('hf', 2), 'rss_self_mb'):.0f}",
            ]
        )
    naive = run_train("naive", shakespeare, 1024, 1)
    h1, h2 = sec("tinyshakespeare", 1024, ("hf", 1)), sec("tinyshakespeare", 1024, ("hf", 2))
    o1 = sec("tinyshakespeare", 1024, ("ours", 1))
    rows.append(
        [
            "tinyshakespeare, **naive** pure Python (1 run)",
            1024,
            "—",
            naive["seconds"],
            h1,
            h2,
            "—",
            f"{naive['seconds'] / h1:.1f}×",
            "—",
            f"{naive['rss_self_mb']:.0f}",
            "—",
        ]
    )
    summary["naive"] = (naive["seconds"], naive["seconds"] / o1, naive["same_as_ours"])
    base = median([r["rss_base_mb"] for k, v in runs.items() if k[2][0] == "ours" for r in v])
    print("## 1. Training byte-level BPE (GPT-2 regex, special token <|endoftext|>)\n")
    print(
        md_table(
            [
                "corpus",
                "vocab",
                "ours 2 workers s",
                "ours 1 worker s",
                "HF 1 thread s",
                "HF 2 threads s",
                "ours 2w / HF 2t",
                "ours 1w / HF 1t",
                "ours 2w peak RSS MB main / workers",
                "ours 1w peak RSS MB",
                "HF 2t peak RSS MB",
            ],
            rows,
        )
    )
    print(
        f"\nMedian of {repeats} run(s), each in a fresh subprocess; seconds exclude interpreter start and "
        f"imports. Peak RSS is ru_maxrss of the process (max over runs; {base:.0f} MB of it is Python "
        "plus imports before training) and, for ours with 2 workers, of the largest forked "
        "pre-tokenization worker (RUSAGE_CHILDREN; fork-shared pages count in both). "
        f"Naive BPE learns exactly our merges: {naive['same_as_ours']}.\n"
    )
    return summary


# ---------------------------------------------------------------------- 2. encoding
def bench_encoding(text: str, repeats: int) -> dict:
    import tiktoken
    from tokenizers import Tokenizer

    from lmforge.tokenizer.formats import load_gpt2

    tok_dir = data_dir() / "tokenizers"

    def load_ours():
        return load_gpt2(tok_dir / "gpt2_openai/encoder.json", tok_dir / "gpt2_openai/vocab.bpe")

    enc = tiktoken.get_encoding("gpt2")
    hf = Tokenizer.from_file(str(tok_dir / "gpt2_hf/tokenizer.json"))
    paragraphs = re.split(r"(?<=\n\n)", text)  # keeps the separators: "".join(paragraphs) == text
    assert "".join(paragraphs) == text
    size_mb = len(text.encode("utf-8")) / MB

    # Correctness first (this also warms the tokenizer used for the "warm" rows).
    reference = enc.encode_ordinary(text)
    warm = load_ours()
    ours_ids = warm.encode_ordinary(text)
    assert ours_ids == reference, "our GPT-2 ids differ from tiktoken's on the Gutenberg text"
    hf_same = hf.encode(text).ids == reference
    batch_same = warm.encode_batch(paragraphs, num_workers=2) == enc.encode_ordinary_batch(
        paragraphs, num_threads=2
    )
    assert batch_same, "our encode_batch differs from tiktoken's encode_ordinary_batch"

    def ours_cold(fn):
        def run():
            tok = load_ours()  # loading is not timed
            return timed(fn, tok)[0]

        return run

    cases = [
        ("tiktoken gpt2", "encode_ordinary(text), 1 thread", lambda: timed(enc.encode_ordinary, text)[0]),
        (
            "tiktoken gpt2",
            "encode_ordinary_batch(paragraphs, num_threads=2)",
            lambda: timed(enc.encode_ordinary_batch, paragraphs, num_threads=2)[0],
        ),
        ("HF tokenizers", "encode(text), 1 thread", lambda: timed(hf.encode, text)[0]),
        (
            "HF tokenizers",
            "encode_batch(paragraphs), 2 threads",
            lambda: timed(hf.encode_batch, paragraphs)[0],
        ),
    ]
    if hasattr(hf, "encode_batch_fast"):  # no offsets: the fair match for ids-only tools
        cases.append(
            (
                "HF tokenizers",
                "encode_batch_fast(paragraphs), 2 threads",
                lambda: timed(hf.encode_batch_fast, paragraphs)[0],
            )
        )
    cases += [
        ("ours", "encode_ordinary(text), cold cache", ours_cold(lambda t: t.encode_ordinary(text))),
        ("ours", "encode_ordinary(text), warm cache", lambda: timed(warm.encode_ordinary, text)[0]),
        (
            "ours",
            "encode_batch(paragraphs, num_workers=2), cold cache",
            ours_cold(lambda t: t.encode_batch(paragraphs, num_workers=2)),
        ),
        (
            "ours",
            "encode_batch(paragraphs, num_workers=2), warm cache",
            lambda: timed(warm.encode_batch, paragraphs, num_workers=2)[0],
        ),
    ]
    seconds: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for _ in range(repeats):
        for i, (_, _, run) in enumerate(cases):
            seconds[i].append(run())
    speed = {(tool, mode): size_mb / median(seconds[i]) for i, (tool, mode, _) in enumerate(cases)}
    base = speed[("tiktoken gpt2", "encode_ordinary(text), 1 thread")]
    print("## 2. Encoding throughput, GPT-2 vocabulary, Gutenberg text\n")
    print(
        md_table(
            ["tool", "mode", "MB/s", "vs tiktoken 1 thread"],
            [[tool, mode, mbs, f"{mbs / base:.2f}×"] for (tool, mode), mbs in speed.items()],
        )
    )
    print(
        f"\n{size_mb:.2f} MB of text, {len(reference):,} tokens, {len(paragraphs):,} paragraphs; median of "
        f"{repeats} run(s). Cold = a freshly loaded tokenizer (load time excluded), warm = its per-piece "
        "cache already filled by a pass over the same text. "
        f"Our ids == tiktoken's: True (asserted; batch too). HF ids == tiktoken's: {hf_same}.\n"
    )
    return {"speed": speed, "base": base}


# ---------------------------------------------------------------------- 3. compression
def bench_compression(corpora: dict[str, str], gutenberg: Path, vocabs: list[int], out: Path) -> dict:
    import tiktoken

    from lmforge.tokenizer import BPETokenizer, load_tokenizer, train_bpe

    nbytes = {name: len(text.encode("utf-8")) for name, text in corpora.items()}
    rows, ours, refs = [], {}, {}

    def measure(encode) -> dict[str, float]:
        return {name: nbytes[name] / len(encode(text)) for name, text in corpora.items()}

    for v in vocabs:
        vocab, merges = train_bpe(gutenberg, v, [SPECIAL], progress=False)
        tok = BPETokenizer(vocab, merges, [SPECIAL])
        ours[v] = measure(tok.encode_ordinary)
        rows.append([f"ours, trained on Gutenberg ({v:,})", *ours[v].values()])
    for name in ("gpt2", "cl100k_base", "o200k_base"):
        enc = tiktoken.get_encoding(name)
        refs[name] = (enc.n_vocab, measure(enc.encode_ordinary))
    smol = load_tokenizer("smollm2-135m-instruct")
    refs["SmolLM2"] = (smol.vocab_size, measure(smol.encode_ordinary))
    rows += [[f"{name} ({n:,})", *bpt.values()] for name, (n, bpt) in refs.items()]
    print("## 3. Compression: UTF-8 bytes per token (higher is better)\n")
    print(md_table(["tokenizer (vocab)", *corpora], rows))
    sizes = ", ".join(f"{k} {v / MB:.2f} MB" for k, v in nbytes.items())
    print(f"\nencode_ordinary (no special tokens). Corpora: {sizes}. Ours saw Gutenberg in training.\n")
    plot_compression(ours, refs, list(corpora), out / "compression.png")
    return {"ours": ours, "refs": refs}


def plot_compression(ours: dict, refs: dict, corpora: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = dict(zip(refs, "s^Dv"))
    vocabs = sorted(ours)
    for k, corpus in enumerate(corpora):
        color = colors[k % len(colors)]
        ax.plot(vocabs, [ours[v][corpus] for v in vocabs], "o-", color=color, label=corpus)
        for name, (n, bpt) in refs.items():
            ax.plot([n], [bpt[corpus]], markers[name], color=color, markersize=8, markeredgecolor="black")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size (log scale)")
    ax.set_ylabel("UTF-8 bytes per token")
    ax.set_title("Compression: ours trained on Gutenberg (lines) vs reference tokenizers (markers)")
    ax.grid(True, which="both", alpha=0.3)
    corpus_legend = ax.legend(title="corpus (ours: lines)", loc="upper left", fontsize=8)
    ax.add_artist(corpus_legend)
    handles = [
        Line2D([], [], marker=m, linestyle="", color="gray", markeredgecolor="black", label=n)
        for n, m in markers.items()
    ]
    ax.legend(handles=handles, title="reference", loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- 4. summary
def print_summary(train: dict, encode: dict, compress: dict) -> None:
    print("## 4. Summary\n")
    lines = []
    for key, (r22, r11, r21) in train.items():
        if key == "naive":
            continue
        name, vocab = key
        verdict = "meets" if r22 <= 2 else "MISSES"
        lines.append(
            f"- Training {name} → {vocab:,}: ours is {r22:.2f}× HF's wall time at 2 workers/2 threads "
            f"({r11:.2f}× single-threaded each; ours 2w vs HF 1t {r21:.2f}×); {verdict} the ≤ 2× goal."
        )
    naive_s, naive_ratio, same = train["naive"]
    lines.append(
        f"- Naive pure-Python BPE on tinyshakespeare → 1,024: {naive_s:.1f} s, {naive_ratio:.0f}× ours "
        f"(1 worker); same merges as ours: {same}."
    )
    speed, base = encode["speed"], encode["base"]
    for (tool, mode), mbs in speed.items():
        if tool == "ours" and "encode_ordinary" in mode:
            verdict = "meets" if mbs / base >= 0.5 else "MISSES"
            lines.append(
                f"- Encoding, ours {mode}: {mbs:.1f} MB/s = {mbs / base:.2f}× tiktoken single thread "
                f"({base:.1f} MB/s); {verdict} the ≥ 0.5× goal."
            )
    best_batch = max((mbs, mode) for (tool, mode), mbs in speed.items() if tool == "ours" and "batch" in mode)
    lines.append(f"- Encoding, ours best batched: {best_batch[0]:.1f} MB/s ({best_batch[1]}).")
    ours, refs = compress["ours"], compress["refs"]
    top = max(ours)
    for corpus in ("gutenberg", "c4_demo"):
        lines.append(
            f"- Compression on {corpus}: ours ({top:,}) {ours[top][corpus]:.2f} bytes/token vs "
            + ", ".join(f"{n} {bpt[corpus]:.2f}" for n, (_, bpt) in refs.items())
            + "."
        )
    print("\n".join(lines))


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, fewer vocab sizes")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per case (default 5, 1 with --quick)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="folder for the plot")
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)  # internal: one training run
    args = parser.parse_args()
    if args.train_worker:
        print(json.dumps(train_worker(json.loads(args.train_worker))))
        return
    repeats = args.repeats or (1 if args.quick else 5)
    args.out.mkdir(parents=True, exist_ok=True)
    # Silences tokenizers' "process just got forked" warning: our encode_batch forks after HF ran.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    import platform

    import tiktoken
    import tokenizers

    start = time.perf_counter()
    print("# Tokenizer benchmark: lmforge vs tiktoken and Hugging Face tokenizers\n")
    print(
        f"Python {platform.python_version()}, tiktoken {tiktoken.__version__}, tokenizers "
        f"{tokenizers.__version__}, {os.cpu_count()} CPU cores, repeats {repeats}"
        f"{' (--quick)' if args.quick else ''}, data {data_dir()}.\n"
    )
    speedup = parallel_speedup()
    print(
        f"Machine check: 2 CPU-bound processes run {speedup:.2f}× as fast as 1 (2.00 = two full cores), "
        "so this is the most any 2-thread/2-worker mode below can gain.\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        tmp = Path(tmp)
        setup_tiktoken(tmp)
        corpora, gutenberg = load_corpora(tmp)
        shakespeare = data_dir() / "text" / "tinyshakespeare.txt"
        train = bench_training(shakespeare, gutenberg, repeats)
        encode = bench_encoding(corpora["gutenberg"], repeats)
        vocabs = [512, 1024, 8192] if args.quick else [512, 1024, 4096, 8192, 32768]
        compress = bench_compression(corpora, gutenberg, vocabs, args.out)
    print_summary(train, encode, compress)
    print(
        f"\nPlot: {args.out / 'compression.png'}. Total benchmark time {time.perf_counter() - start:.0f} s."
    )


if __name__ == "__main__":
    main()
