"""`lmforge <command>`: a thin argparse front end over the modules; each command calls one function."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lmforge.tokenizer.patterns import PATTERNS


def data_dir() -> Path:
    """The shared data sets: LMFORGE_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("LMFORGE_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return here.parent / "shared" / "data"


def _pattern(name: str):
    if name in PATTERNS:
        return PATTERNS[name]
    raise SystemExit(f"unknown pattern {name!r}; choose one of: {', '.join(PATTERNS)}")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import BPETokenizer, train_bpe

    t0 = time.perf_counter()
    vocab, merges = train_bpe(
        args.input, args.vocab_size, args.special_tokens, _pattern(args.pattern), args.workers
    )
    dt = time.perf_counter() - t0
    tok = BPETokenizer(vocab, merges, args.special_tokens, _pattern(args.pattern), name=Path(args.out).stem)
    tok.save(args.out, format=args.format)
    print(f"trained {len(vocab)} tokens ({len(merges)} merges) on {args.input} in {dt:.2f}s → {args.out}")


def _read_text(args: argparse.Namespace) -> str:
    if args.file:
        return Path(args.file).read_text(encoding="utf-8", errors="replace")
    if args.text is not None:
        return args.text
    return sys.stdin.read()


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = _read_text(args)
    ids = tok.encode(text)
    if args.tokens:
        print(json.dumps([tok.decode([i]) for i in ids], ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    n_bytes = len(text.encode("utf-8"))
    print(
        f"{len(ids)} tokens, {n_bytes} bytes, {n_bytes / max(1, len(ids)):.2f} bytes/token", file=sys.stderr
    )


def cmd_tokenizer_decode(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    try:
        ids = [int(x) for x in (args.ids or sys.stdin.read().split())]
    except ValueError as e:
        raise SystemExit(f"token ids must be integers: {e}") from None
    print(tok.decode(ids))


def cmd_tokenizer_info(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    print(f"{type(tok).__name__}: vocab size {tok.vocab_size}, {len(tok.special_tokens)} special tokens")
    print(
        f"bos={tok.bos_token!r} eos={tok.eos_token!r} chat template: {'yes' if tok.chat_template else 'no'}"
    )
    if args.chat:
        messages = [{"role": "user", "content": args.chat}]
        print(tok.apply_chat_template(messages, add_generation_prompt=True))


def cmd_info(args: argparse.Namespace) -> None:
    from lmforge.model import load_model
    from lmforge.model.stats import count

    model = load_model(args.model)
    cfg = model.config
    print(
        f"{args.model}: {cfg.family}, {cfg.n_layers} layers, d={cfg.dim}, {cfg.n_heads} heads / {cfg.n_kv_heads} KV heads"
    )
    print(count(model, args.seq_len).summary(args.seq_len))


def cmd_models(args: argparse.Namespace) -> None:
    from lmforge.registry import MODELS, resolve

    for m in MODELS.values():
        try:
            where = str(resolve(m.name))
        except FileNotFoundError:
            where = f"not installed: {m.install_command()}"
        print(f"{m.name:24s} {m.description}\n{'':24s} {where}")


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job for now: train a BPE tokenizer on a real corpus, then use it and compare."""
    from lmforge.tokenizer import BPETokenizer, load_tokenizer, train_bpe

    corpus = Path(args.corpus) if args.corpus else data_dir() / "text" / "tinyshakespeare.txt"
    if not corpus.is_file():
        raise SystemExit(
            f"corpus {corpus} not found: pass --corpus FILE or set LMFORGE_DATA to the shared data folder"
        )
    text = corpus.read_text(encoding="utf-8", errors="replace")
    sample = "Hello world! To be, or not to be: that is the question. ünïcödé 🤗"
    print(f"corpus: {corpus} ({len(text.encode('utf-8')) / 1e6:.2f} MB)\n")
    print("| tokenizer | vocab | train s | bytes/token on corpus |")
    print("|---|---:|---:|---:|")
    trained = None
    for size in args.vocab_sizes:
        t0 = time.perf_counter()
        vocab, merges = train_bpe(corpus, size, ["<|endoftext|>"], progress=False)
        dt = time.perf_counter() - t0
        tok = BPETokenizer(vocab, merges, ["<|endoftext|>"])
        print(
            f"| ours (trained) | {size} | {dt:.2f} | {len(text.encode('utf-8')) / len(tok.encode(text)):.2f} |"
        )
        trained = tok
    for name in ("smollm2-135m-instruct",):
        try:
            ref = load_tokenizer(name)
        except FileNotFoundError as e:
            print(f"(skipping {name}: {e})")
            continue
        print(f"| {name} | {ref.vocab_size} | – | {len(text.encode('utf-8')) / len(ref.encode(text)):.2f} |")
    ids = trained.encode(sample)
    print(f"\nencode({sample!r})\n  ids:    {ids}")
    print(f"  pieces: {[_show(trained.vocab[i]) for i in ids]}")
    print(f"  decode: {trained.decode(ids)!r}  (round trip: {trained.decode(ids) == sample})")
    if args.out:
        trained.save(args.out)
        print(f"\nsaved the {trained.vocab_size}-token tokenizer to {args.out}")


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                  "presence_penalty", "seed")  # fmt: skip


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags every command that runs a chat model shares: which weights, how stored, how sampled."""
    p.add_argument(
        "--dtype",
        help="float32 or bfloat16 (default float32; bfloat16 with --quantize, which its kernels need)",
    )
    p.add_argument(
        "--quantize", choices=["int8", "int4"], help="weight-only quantization applied at load time"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with torch.compile over a static cache (faster; the first run compiles for ~1 min)",
    )
    p.add_argument("--max-tokens", type=int, default=512, help="most new tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, help="same seed, same text")
    p.add_argument("--system", help="system prompt")


def _load_chat_model(args: argparse.Namespace):
    from lmforge.infer.sampling import SamplingParams
    from lmforge.model import load_model

    sampling = {k: getattr(args, k) for k in SAMPLING_FLAGS}
    SamplingParams(**sampling)  # bad values fail here, before the model loads
    kwargs = {"quantize": args.quantize} if args.quantize else {}
    model = load_model(args.model, dtype=args.dtype, **kwargs)
    if getattr(model, "tokenizer", None) is None or not hasattr(model, "config"):
        raise ValueError(f"{args.model} is not a chat model with a tokenizer (a decoder LM is needed)")
    return model, sampling


def cmd_pretrain(args: argparse.Namespace) -> None:
    from lmforge.train.config import load_config, overrides_from_args
    from lmforge.train.pretrain import run_pretrain
    from lmforge.train.trainer import TrainingDiverged

    cfg = load_config(args.config, overrides_from_args(args))
    try:
        summary = run_pretrain(cfg)
    except TrainingDiverged as e:
        raise SystemExit(f"error: {e}") from None
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items() if k != "sample"}
    print(json.dumps(shown))
    if summary.get("sample"):
        print("sample:", summary["sample"])


def cmd_sft(args: argparse.Namespace) -> None:
    from lmforge.train.config import FinetuneConfig, load_config, overrides_from_args
    from lmforge.train.finetune import run_sft
    from lmforge.train.trainer import TrainingDiverged

    over = overrides_from_args(args, FinetuneConfig)
    over["method"] = over.get("method") or args.default_method
    cfg = load_config(args.config, over, FinetuneConfig)
    try:
        summary = run_sft(cfg)
    except TrainingDiverged as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))


ALIGN_COMMANDS = {  # lmforge.train.align.run_<name>
    "reward": "train a Bradley–Terry reward model on preference pairs",
    "dpo": "direct preference optimisation on preference pairs (LoRA or full)",
    "ppo": "PPO-RLHF: raise a reward model's score with a KL leash to the reference",
    "grpo": "GRPO with a verifiable reward (generated arithmetic problems)",
    "distill": "distil a teacher's soft targets into a student on chat data",
}


def cmd_align(args: argparse.Namespace) -> None:
    from lmforge.train import align
    from lmforge.train.config import AlignConfig, load_config, overrides_from_args
    from lmforge.train.trainer import TrainingDiverged

    cfg = load_config(args.config, overrides_from_args(args, AlignConfig), AlignConfig)
    try:
        summary = getattr(align, f"run_{args.align_command}")(cfg)
    except TrainingDiverged as e:
        raise SystemExit(f"error: {e}") from None
    summary.pop("command_config", None)
    print(json.dumps(summary, default=str))


def cmd_merge(args: argparse.Namespace) -> None:
    from lmforge import load_model
    from lmforge.model.export import save_hf
    from lmforge.train.lora import load_peft, remove_lora

    model = load_model(args.model)
    cfg = load_peft(model, args.adapter)
    merged = remove_lora(model, merge=True)
    out = save_hf(merged, args.out)
    print(f"merged {args.adapter} (r={cfg.r}, alpha={cfg.alpha}) into {args.model}: {out}")
    if args.gguf:
        from lmforge.model.export import save_gguf

        print(f"GGUF ({args.gguf_dtype}): {save_gguf(merged, args.gguf, dtype=args.gguf_dtype)}")


def cmd_speedrun(args: argparse.Namespace) -> None:
    from lmforge.train.speedrun import run_speedrun

    report = run_speedrun(
        args.out_dir, args.preset, args.corpus, args.minutes, args.device, args.vocab_size, args.depth
    )
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}")


def cmd_scaling(args: argparse.Namespace) -> None:
    from lmforge.train.config import load_config, overrides_from_args
    from lmforge.train.scaling import plot_scaling, run_grid, table

    cfg = load_config(args.config, overrides_from_args(args))
    rows, fit = run_grid(cfg, args.depths, args.steps, args.grid_dir)
    print(table(rows, fit))
    if fit is None:
        print(f"{len(rows)} runs: the fit needs at least 5 (more --depths or --steps)")
        return
    if args.plot:
        print(f"plot: {plot_scaling(rows, fit, args.plot)}")


def cmd_eval(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from lmforge.eval import report
    from lmforge.eval.tasks import DEFAULT_SUITE, resolve_tasks

    if args.compare:  # side by side from earlier runs: no model is loaded
        runs = dict(report.load(p) for p in args.compare)
        print(report.compare(runs))
        if args.plot:
            print(f"plot: {report.bar_chart(runs, args.plot)}")
        return
    if not args.model:
        raise ValueError("name a model (a packaged name, a .gguf file or a folder), or use --compare")
    tasks = resolve_tasks(args.tasks or ",".join(DEFAULT_SUITE))  # unknown names fail before loading
    import time

    import torch

    import lmforge
    from lmforge.eval.harness import Cache, Evaluator, group_averages
    from lmforge.registry import cache_dir, resolve

    torch.set_num_threads(args.threads or torch.get_num_threads())
    path = resolve(args.model)
    if path.is_dir() and not (path / "config.json").is_file():  # a training run: its latest checkpoint
        from lmforge.train.checkpoint import latest_checkpoint

        path = latest_checkpoint(path) or path
    model = lmforge.load_model(path, dtype=args.dtype, quantize=args.quantize)
    if args.tokenizer:
        from lmforge.tokenizer import load_tokenizer

        model.tokenizer = load_tokenizer(args.tokenizer)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(f"{path}: no tokenizer found with the model; pass --tokenizer NAME_OR_PATH")
    stat = path.stat()
    fingerprint = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{args.dtype}|{args.quantize}|{args.chat_template}|{args.tokenizer}"
    cache = Cache(None if args.no_cache else (args.cache or cache_dir() / "eval" / "cache.sqlite"))
    ev = Evaluator(model, fingerprint, cache, rows_per_batch=args.batch_size, gen_batch=args.batch_size * 4,
                   max_len=args.max_length, chat=args.chat_template)  # fmt: skip
    data_dir = Path(args.data or os.environ.get("LMFORGE_DATA") or Path.cwd().parent / "shared" / "data")
    t0 = time.perf_counter()
    results = []
    for task in tasks:
        r = ev.run(task, data_dir, args.limit, args.num_fewshot, args.on_bad_row)
        if r["skipped"]:
            print(f"{task.name}: skipped {r['skipped']} malformed row(s)")
        results.append(r)
    results += group_averages(results)
    name = path.stem if path.suffix == ".gguf" else path.name
    info = {"dtype": args.dtype or "float32", "quantize": args.quantize, "chat_template": args.chat_template,
            "limit": args.limit, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    paths = report.write(results, args.out_dir, name, info)
    print(report.markdown([{k: v for k, v in r.items() if k != "rows"} for r in results], name))
    print(f"{info['seconds']} s; " + ", ".join(f"{k}: {v}" for k, v in paths.items()))


def _filter(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--filter {p!r}: expected FIELD=VALUE")
        k, v = p.split("=", 1)
        out.setdefault(k, []).append(v)
    return out


def _reranker(name: str | None, model_name: str):
    if not name:
        return None
    if name == "llm":
        from lmforge import load_model, load_tokenizer
        from lmforge.retrieval.rerank import LLMReranker

        return LLMReranker(load_model(model_name), load_tokenizer(model_name))
    from lmforge.registry import resolve
    from lmforge.retrieval.rerank import CrossEncoder

    return CrossEncoder.from_folder(resolve(name))


def cmd_index(args: argparse.Namespace) -> None:
    from lmforge.retrieval.analysis import Analyzer
    from lmforge.retrieval.bm25 import BM25
    from lmforge.retrieval.search import SearchIndex, read_documents

    def docs(index: SearchIndex) -> list[dict]:
        count = None
        if args.chunking == "tokens" and index.embedder_name:  # chunks sized in the embedder's tokens
            tok = index.encoder.tokenizer
            count = lambda w: len(tok.encode(w, add_special_tokens=False))  # noqa: E731
        return read_documents(args.docs, args.chunking, args.chunk_size, args.overlap, args.on_bad_row, count)

    t0 = time.perf_counter()
    if args.action == "build":
        embedder = None if args.embedder == "none" else args.embedder
        bm25 = BM25(Analyzer(stemmer=None if args.stemmer == "none" else args.stemmer), method=args.bm25)
        index = SearchIndex(embedder, bm25)
        index.add(docs(index))
    else:
        index = SearchIndex.load(args.index)
        if args.action == "add":
            index.add(docs(index))
        else:
            index.delete(args.ids)
    index.save(args.index)
    print(f"{args.index}: {len(index.docs)} documents ({time.perf_counter() - t0:.1f} s)")


def cmd_index_map(args: argparse.Namespace) -> None:
    from lmforge.retrieval.cluster import MinHashLSH, corpus_map, embedding_duplicates, kmeans, silhouette
    from lmforge.retrieval.search import SearchIndex

    index = SearchIndex.load(args.index)
    if index.dense is None:
        raise ValueError(f"{args.index} has no dense vectors (built with --embedder none)")
    ids = index.dense.ids
    vecs = index.dense.vectors
    if args.k:
        labels, _ = kmeans(vecs, args.k)
        print(f"k-means, k={args.k}: silhouette {silhouette(vecs, labels):.3f}")
        for j in range(args.k):
            members = [ids[i] for i in range(len(ids)) if labels[i] == j]
            print(f"  cluster {j}: {len(members)} documents, e.g. {', '.join(members[:3])}")
    else:
        labels = None
    if args.png:
        print(f"map: {corpus_map(vecs, args.png, labels)}")
    texts = [index.docs[i]["text"] for i in ids]
    for a, b, sim in MinHashLSH().duplicates(texts, ids, args.jaccard):
        print(f"near-duplicate text (Jaccard {sim:.2f}): {a}  {b}")
    for a, b, sim in embedding_duplicates(vecs, ids, args.cosine):
        print(f"near-duplicate meaning (cosine {sim:.3f}): {a}  {b}")


def cmd_search(args: argparse.Namespace) -> None:
    from lmforge.retrieval.search import SearchIndex

    index = SearchIndex.load(args.index)
    depth = max(args.k, args.rerank_depth) if args.rerank else args.k
    hits = index.search(args.query, depth, args.mode, args.fusion, args.weight, _filter(args.filter))
    rr = _reranker(args.rerank, args.model)
    if rr is not None:
        hits = rr.rerank(args.query, hits, index.texts())
    for rank, (d, score) in enumerate(hits[: args.k], 1):
        text = " ".join(index.docs[d]["text"].split())
        print(f"{rank:>3}  {score:9.4f}  {d}  {text[:160]}")
    if not hits:
        print("no document matches")


def cmd_rag(args: argparse.Namespace) -> None:
    from lmforge import load_model
    from lmforge.retrieval.rag import RAG
    from lmforge.retrieval.search import SearchIndex

    index = SearchIndex.load(args.index)
    rag = RAG(
        lambda q, k: index.search(q, k, args.mode),
        index.texts(),
        load_model(args.model),
        k=args.k,
        min_score=args.min_score,
        reranker=_reranker(args.rerank, args.model),
    )
    ans = rag.answer(args.question)
    print(ans.text)
    for i, (d, score) in enumerate(ans.sources, 1):
        mark = "*" if i in ans.cited else " "
        print(f"{mark}[{i}] {d} ({score:.3f})")
    if ans.sources:
        print("groundedness (lexical): " + f"{rag.groundedness(ans)['lexical']:.2f}")


def cmd_retrieval_eval(args: argparse.Namespace) -> None:
    from lmforge.retrieval import metrics
    from lmforge.retrieval.collections import read_qrels, read_run

    qrels = read_qrels(args.qrels)
    names = args.runs
    per = {n: metrics.evaluate(read_run(n), qrels) for n in names}
    cols = list(next(iter(per.values())))
    print("| run | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for n, pq in per.items():
        m = metrics.mean(pq)
        print(f"| {n} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    if len(names) > 1:
        base = per[names[0]]["ndcg@10"]
        for n in names[1:]:
            p = metrics.randomization_test(per[n]["ndcg@10"], base)
            print(f"{n} vs {names[0]}: nDCG@10 paired randomisation test p = {p:.4f}")


def cmd_chat(args: argparse.Namespace) -> None:
    from lmforge.infer.chat import ChatSession, run_chat

    model, sampling = _load_chat_model(args)
    run_chat(ChatSession(model, args.system, args.max_tokens, sampling, compiled=args.compile))


def _constraint(args: argparse.Namespace, model):
    from lmforge.infer import constrained as c

    tok, v = model.tokenizer, model.config.vocab_size
    if args.json_schema:
        schema = Path(args.json_schema).read_text() if Path(args.json_schema).is_file() else args.json_schema
        return c.json_schema_constraint(schema, tok, v)
    if args.regex:
        return c.regex_constraint(args.regex, tok, v)
    if args.choice:
        return c.choice_constraint(args.choice, tok, v)
    return None


def _stdin_text() -> str:
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"standard input is not UTF-8 text (invalid byte at offset {e.start})") from None


def cmd_generate(args: argparse.Namespace) -> None:
    """One prompt in, one answer out; --json adds token counts and prefill/decode speeds."""
    import torch

    from lmforge.infer.generate import StopText, end_ids, prompt_ids, stream_ids, text_deltas
    from lmforge.infer.sampling import SamplingParams

    prompt = args.prompt if args.prompt is not None else _stdin_text()
    if not prompt.strip():
        raise ValueError("empty prompt: pass --prompt TEXT or pipe text on standard input")
    model, sampling = _load_chat_model(args)
    tok = model.tokenizer
    if not args.raw and not getattr(tok, "chat_template", None):
        print(f"note: {args.model} has no chat template; sending the prompt as it is", file=sys.stderr)
    if args.raw or not getattr(tok, "chat_template", None):
        ids = prompt_ids(tok, prompt)
    else:
        head = [{"role": "system", "content": args.system}] if args.system else []
        ids = prompt_ids(tok, head + [{"role": "user", "content": prompt}])
    room = model.config.max_seq_len - len(ids)
    if room <= 0:
        raise ValueError(
            f"the prompt has {len(ids)} tokens; the model's context window is {model.config.max_seq_len}"
        )
    eos = set() if args.ignore_eos else end_ids(tok)
    tokens: list[int] = []

    def tokens_from_model():
        params, n = SamplingParams(**sampling), min(args.max_tokens, room)
        if not args.speculative:
            constraint = _constraint(args, model)
            return stream_ids(model, torch.tensor([ids]), n, params, eos, constraint, args.compile)
        from lmforge.infer.speculative import LayerSkipDrafter, NgramDrafter, speculative_stream_ids

        if args.json_schema or args.regex or args.choice or args.compile:
            raise ValueError(
                "--speculative does not combine with --compile, --json-schema, --regex or --choice"
            )
        drafter = NgramDrafter() if args.speculative == "ngram" else LayerSkipDrafter(model)
        return speculative_stream_ids(
            model, torch.tensor([ids]), n, params, drafter, eos, args.num_draft, stats
        )

    stats: dict = {}

    def counted():
        for t in tokens_from_model():
            tokens.append(t)
            if len(tokens) == 1:
                times.append(time.perf_counter())
            yield t

    cut, out = StopText(args.stop or []), []
    times = [time.perf_counter()]
    for piece in text_deltas(tok, counted()):
        shown = cut.push(piece)
        out.append(shown)
        if not args.json:
            print(shown, end="", flush=True)
        if cut.stopped:
            break
    out.append(cut.flush())
    end = time.perf_counter()
    if not args.json:
        print(out[-1])
        return
    first = times[1] if len(times) > 1 else end
    decode_s = end - first
    print(json.dumps({
        "text": "".join(out),
        "prompt_tokens": len(ids),
        "completion_tokens": len(tokens),
        "time_to_first_token_s": round(first - times[0], 4),
        "prefill_tokens_per_s": round(len(ids) / max(first - times[0], 1e-9), 1),
        "decode_tokens_per_s": round((len(tokens) - 1) / decode_s, 1) if len(tokens) > 1 and decode_s > 0 else None,
        **({"speculative": stats} if stats else {}),
    }, ensure_ascii=False))  # fmt: skip


def _show(token: bytes) -> str:
    """A token as text, or as its bytes when it is only part of a UTF-8 character."""
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in token)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmforge", description="The life of an LLM, readable and real.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a BPE tokenizer on a real corpus and show what it does")
    d.add_argument("--corpus", help="text file (default: tinyshakespeare from the shared data)")
    d.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 1024, 4096])
    d.add_argument("--out", help="save the last trained tokenizer here")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("models", help="list the models lmforge knows and where their files are")
    m.set_defaults(func=cmd_models)

    i = sub.add_parser("info", help="parameter and FLOP counts of a model")
    i.add_argument("model", help="model name, .gguf file or Hugging Face folder")
    i.add_argument("--seq-len", type=int, default=512, help="context length for the FLOP count")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("chat", help="talk to a model in the terminal (streaming; /reset, /system)")
    c.add_argument(
        "model", nargs="?", default="smollm2-135m-instruct", help="model name, .gguf file or folder"
    )
    add_model_args(c)
    c.set_defaults(func=cmd_chat)

    g = sub.add_parser("generate", help="one-shot generation: --prompt TEXT or standard input")
    g.add_argument(
        "model", nargs="?", default="smollm2-135m-instruct", help="model name, .gguf file or folder"
    )
    g.add_argument("--prompt", "-p", help="the prompt (default: read standard input)")
    g.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    g.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="run to --max-tokens even past an end token")
    g.add_argument(
        "--json", action="store_true", help="print JSON: text, token counts, prefill/decode tokens/s"
    )
    g.add_argument("--json-schema", help="constrain the output to this JSON schema (a file or inline JSON)")
    g.add_argument("--regex", help="constrain the output to match this regular expression")
    g.add_argument("--choice", nargs="+", help="constrain the output to one of these strings")
    g.add_argument(
        "--speculative", choices=["ngram", "layerskip"], help="draft-and-verify decoding (same output)"
    )
    g.add_argument("--num-draft", type=int, default=4, help="tokens drafted per verification (--speculative)")
    add_model_args(g)
    g.set_defaults(func=cmd_generate)

    from lmforge.serve.launch import add_serve_arguments, run_serve  # argparse only: no torch, no FastAPI

    sv = sub.add_parser("serve", help="OpenAI-compatible API server with a web chat page")
    add_serve_arguments(sv)
    sv.set_defaults(func=run_serve)

    from lmforge.train.config import add_config_arguments  # dataclass + argparse only: no torch

    pt = sub.add_parser("pretrain", help="pretrain a model from scratch (config file and/or flags)")
    pt.add_argument("--config", help="YAML or JSON file of TrainConfig fields; flags override it")
    add_config_arguments(pt)
    pt.set_defaults(func=cmd_pretrain)

    from lmforge.train.config import FinetuneConfig

    for name, method, help_ in (
        ("sft", "full", "supervised fine-tuning of every weight on chat data (loss on assistant tokens)"),
        ("lora", "lora", "LoRA fine-tuning on chat data; saves a PEFT adapter folder"),
        ("qlora", "qlora", "QLoRA: LoRA on an NF4-quantized frozen base; saves a PEFT adapter folder"),
    ):
        ft = sub.add_parser(name, help=help_)
        ft.add_argument("--config", help="YAML or JSON file of FinetuneConfig fields; flags override it")
        add_config_arguments(ft, FinetuneConfig)
        ft.set_defaults(func=cmd_sft, default_method=method)

    from lmforge.train.config import AlignConfig

    for name, help_ in ALIGN_COMMANDS.items():
        al = sub.add_parser(name, help=help_)
        al.add_argument("--config", help="YAML or JSON file of AlignConfig fields; flags override it")
        add_config_arguments(al, AlignConfig)
        al.set_defaults(func=cmd_align, align_command=name)

    mg = sub.add_parser("merge", help="fold a LoRA adapter (PEFT folder) into its base model → HF folder")
    mg.add_argument("adapter", help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    mg.add_argument(
        "--model", default="smollm2-135m-instruct", help="the base model the adapter was trained on"
    )
    mg.add_argument("--out", required=True, help="the merged model's folder (HF safetensors + config.json)")
    mg.add_argument(
        "--gguf", help="also write the merged model as this GGUF file (llama family), for llama.cpp"
    )
    mg.add_argument("--gguf-dtype", default="f16", choices=("f16", "f32"))
    mg.set_defaults(func=cmd_merge)

    sc = sub.add_parser(
        "scaling", help="train a grid of sizes × token budgets, fit L(N, D), plot the frontier"
    )
    sc.add_argument("--depths", type=int, nargs="+", required=True, help="model depths (nanochat's dial)")
    sc.add_argument("--steps", type=int, nargs="+", required=True, help="training steps of each run")
    sc.add_argument("--grid-dir", default="runs/scaling", help="runs and grid.jsonl (a stopped grid resumes)")
    sc.add_argument("--plot", default="runs/scaling/scaling.png", help="the PNG to write ('' for none)")
    sc.add_argument("--config", help="YAML or JSON file of TrainConfig fields shared by every run")
    add_config_arguments(sc)
    sc.set_defaults(func=cmd_scaling)

    ev = sub.add_parser(
        "eval", help="benchmarks (ARC, HellaSwag, MMLU, GSM8K, WikiText, ...) as lm-eval scores them"
    )
    ev.add_argument(
        "model",
        nargs="?",
        help="a packaged name, a .gguf file, a Hugging Face folder, or an "
        "lmforge checkpoint (step_*.pt, a run folder, an exported .safetensors)",
    )
    ev.add_argument("--tokenizer", help="the tokenizer, when the model files have none (a name or path)")
    ev.add_argument(
        "--tasks", help="comma-separated tasks or groups, or task files (default: the 5-task suite)"
    )
    ev.add_argument("--limit", type=int, help="only the first N rows of each task")
    ev.add_argument("--num-fewshot", type=int, help="examples before each question (default: the task's)")
    ev.add_argument("--batch-size", type=int, default=2, help="rows of packed requests per forward pass")
    ev.add_argument("--max-length", type=int, help="context window (default: the model's)")
    ev.add_argument(
        "--chat-template", action="store_true", help="wrap each prompt in the model's chat template"
    )
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    ev.add_argument("--quantize", choices=["int8", "int4"])
    ev.add_argument("--data", help="the shared data folder (default: $LMFORGE_DATA, else ../shared/data)")
    ev.add_argument("--out-dir", default="runs/eval", help="results.json, results.md, results.png")
    ev.add_argument("--cache", help="SQLite file of finished requests (default: ~/.cache/lmforge/eval)")
    ev.add_argument("--no-cache", action="store_true", help="recompute everything")
    ev.add_argument(
        "--on-bad-row",
        choices=["fail", "skip"],
        default="fail",
        help="a malformed data row: stop with its line number, or skip it and count it",
    )
    ev.add_argument(
        "--compare", nargs="+", metavar="RESULTS", help="results.json files (or folders) side by side"
    )
    ev.add_argument("--plot", help="with --compare: a grouped bar chart PNG")
    ev.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ev.set_defaults(func=cmd_eval)

    ix = sub.add_parser("index", help="build, grow or shrink a search index (BM25 + dense vectors)")
    isub = ix.add_subparsers(dest="action", required=True)
    for action in ("build", "add", "delete"):
        a = isub.add_parser(action)
        a.add_argument("index", help="the index folder")
        if action == "delete":
            a.add_argument("ids", nargs="+", help="document ids to remove")
        else:
            a.add_argument(
                "--docs", required=True, help="a .jsonl file ({id, text, ...}) or a folder of .txt/.md"
            )
            a.add_argument("--chunking", choices=["paragraphs", "tokens"], default="paragraphs")
            a.add_argument(
                "--chunk-size",
                type=int,
                default=200,
                help="tokens per chunk (--chunking tokens; the embedder's tokens, else words)",
            )
            a.add_argument("--overlap", type=int, default=40)
            a.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail")
        if action == "build":
            a.add_argument(
                "--embedder", default="all-minilm-l6-v2", help="a BERT model, or none for BM25 only"
            )
            a.add_argument(
                "--bm25", default="lucene", choices=["lucene", "robertson", "atire", "bm25l", "bm25+"]
            )
            a.add_argument("--stemmer", default="english", help="a Snowball language, or none")
        a.set_defaults(func=cmd_index)

    mp = isub.add_parser("map", help="k-means clusters, a 2-D PCA map (PNG) and near-duplicates of an index")
    mp.add_argument("index")
    mp.add_argument("--k", type=int, default=0, help="clusters (0: none)")
    mp.add_argument("--png", help="write the 2-D map here")
    mp.add_argument("--jaccard", type=float, default=0.8, help="MinHash near-duplicate threshold")
    mp.add_argument("--cosine", type=float, default=0.97, help="embedding near-duplicate threshold")
    mp.set_defaults(func=cmd_index_map)

    se = sub.add_parser("search", help="search an index: bm25, dense or hybrid, optionally reranked")
    se.add_argument("index")
    se.add_argument("query")
    se.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="hybrid")
    se.add_argument("--fusion", choices=["rrf", "score"], default="rrf")
    se.add_argument("--weight", type=float, default=0.5, help="dense weight for --fusion score")
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--filter", action="append", help="FIELD=VALUE on document metadata (repeatable)")
    se.add_argument("--rerank", help="a cross-encoder folder, or llm (the chat model judges relevance)")
    se.add_argument("--rerank-depth", type=int, default=30)
    se.add_argument("--model", default="smollm2-135m-instruct", help="the chat model for --rerank llm")
    se.set_defaults(func=cmd_search)

    rg = sub.add_parser("rag", help="answer a question from an index, citing its sources")
    rg.add_argument("index")
    rg.add_argument("question")
    rg.add_argument("--model", default="smollm2-135m-instruct")
    rg.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="hybrid")
    rg.add_argument("-k", type=int, default=3, help="passages in the prompt")
    rg.add_argument("--min-score", type=float, help="refuse when the best retrieval score is lower")
    rg.add_argument("--rerank", help="a cross-encoder folder, or llm")
    rg.set_defaults(func=cmd_rag)

    rv = sub.add_parser("retrieval", help="retrieval evaluation")
    rsub = rv.add_subparsers(dest="action", required=True)
    re_ = rsub.add_parser(
        "eval", help="nDCG@10, Recall@100, MRR@10, MAP of TREC run files, with a paired test"
    )
    re_.add_argument("runs", nargs="+", help="TREC run files; the first is the baseline of the tests")
    re_.add_argument("--qrels", required=True, help="TREC qrels (qid 0 docid grade)")
    re_.set_defaults(func=cmd_retrieval_eval)

    sr = sub.add_parser("speedrun", help="tokenizer → shards → pretraining → report.md, in one command")
    sr.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
    sr.add_argument("--corpus", nargs="+", help="text files (default: shared TinyStories + tinyshakespeare)")
    sr.add_argument("--minutes", type=float, help="training budget (default: the preset's)")
    sr.add_argument("--vocab-size", type=int, help="BPE vocabulary (default: the preset's)")
    sr.add_argument("--depth", type=int, help="model depth (default: the preset's)")
    sr.add_argument("--out-dir", default="runs/speedrun")
    sr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sr.set_defaults(func=cmd_speedrun)

    t = sub.add_parser("tokenizer", help="train, inspect and run tokenizers")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True)
    tr = tsub.add_parser("train", help="train byte-level BPE on a text file")
    tr.add_argument("input")
    tr.add_argument("--vocab-size", type=int, required=True)
    tr.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"])
    tr.add_argument("--pattern", default="gpt2", help=f"pre-tokenizer: {', '.join(PATTERNS)}")
    tr.add_argument(
        "--workers", type=int, default=None, help="pre-tokenization processes (default: all cores)"
    )
    tr.add_argument("--out", required=True, help="output file (.json)")
    tr.add_argument("--format", default="lmforge", choices=["lmforge", "hf"])
    tr.set_defaults(func=cmd_tokenizer_train)
    for name, func, help_ in [
        ("encode", cmd_tokenizer_encode, "text → token ids"),
        ("decode", cmd_tokenizer_decode, "token ids → text"),
        ("info", cmd_tokenizer_info, "describe a tokenizer (and render its chat template)"),
    ]:
        s = tsub.add_parser(name, help=help_)
        s.add_argument(
            "--tokenizer", "-t", default="smollm2-135m-instruct", help="model name, folder or file"
        )
        if name == "encode":
            s.add_argument("text", nargs="?")
            s.add_argument("--file", help="read the text from this file")
            s.add_argument("--tokens", action="store_true", help="print token strings instead of ids")
        elif name == "decode":
            s.add_argument("ids", nargs="*")
        else:
            s.add_argument("--chat", help="render this user message with the chat template")
        s.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
