"""Server benchmark: aggregate throughput of a live `lmforge serve` under 1, 4 and 16 streaming clients.

The point of a server that batches (continuous batching, Yu et al. 2022, "Orca"; Kwon et al. 2023,
"vLLM"): one decode step of a small model on a CPU costs about the same for 1 or 16 sequences (it is
bound by reading the weights and by per-op overhead, not by arithmetic), so serving 16 clients at once
should give many times the tokens/s of serving one. The goal from the issue: 16 clients ≥ 4× one.

What it does: starts `python -m lmforge.serve` on a free localhost port (a subprocess, killed at the end),
waits for GET /health, sends one warm-up request, then for each concurrency level C (--clients, default
1,4,16) starts C threads at once, each streaming --requests chat completions (POST /v1/chat/completions,
stream=true, temperature 0, max_tokens --tokens = 128, stream_options.include_usage). Prompts ask for
long answers, and `ignore_eos` (lmforge's vLLM-style extension) is sent so every answer runs the full
--tokens (--no-ignore-eos to leave it out); the generated count is taken from the final usage chunk
(else the number of content chunks).

Reported per level: aggregate tokens/s (all completion tokens / wall time from the first request sent
to the last stream closed), its ratio to 1 client, per-stream decode tokens/s (after the first token),
and the p50 / p99 time to first token (TTFT: request sent → first content delta). With 16 streams p99 is
close to the maximum: few samples. Only localhost traffic; every loop is bounded by timeouts.

    python bench/bench_serve.py                          # 1, 4, 16 clients, 128 tokens (~2 min idle)
    python bench/bench_serve.py --clients 1,2,4,8,16 --requests 2
    python bench/bench_serve.py --server-args "--quantize int4"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_line, md_table, median  # noqa: E402

GOAL_16_VS_1 = 4.0
PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper during a winter storm.",
    "Explain in detail how a steam engine works, step by step, for a curious teenager.",
    "Describe the history of the printing press and its effects on Europe, at length.",
    "Write a long letter from a sailor to his family describing a voyage around the world.",
    "Give a detailed, step-by-step guide to baking sourdough bread at home.",
    "Tell a long fairy tale about a fox, a crow and a magic well.",
    "Explain photosynthesis thoroughly, covering light reactions and the Calvin cycle.",
    "Write a detailed travel guide to a fictional mountain city, with food, sights and customs.",
    "Describe, in depth, how the internet routes a message from one computer to another.",
    "Write a long story about two robots who open a bakery together.",
    "Explain the causes and consequences of the French Revolution in detail.",
    "Write a long diary entry of an astronaut during her first week on the Moon.",
    "Describe how to plan, plant and care for a vegetable garden through a whole year.",
    "Tell a long adventure story about children who find a map in their grandmother's attic.",
    "Explain in detail how vaccines train the immune system, with examples.",
    "Write a long, descriptive essay about the sea in all four seasons.",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with few samples p99 is the largest one, said plainly."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s), max(1, math.ceil(q / 100 * len(s)))) - 1]


# ---------------------------------------------------------------------- the server
class Server:
    """`python -m lmforge.serve` on 127.0.0.1:port as a subprocess; its output goes to a log file."""

    def __init__(self, port: int, extra: list[str], log_path: Path):
        self.port, self.log_path = port, log_path
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in stop())
        cmd = [sys.executable, "-m", "lmforge.serve", "--host", "127.0.0.1", "--port", str(port), *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float) -> dict:
        return wait_health(self.url, timeout, self)

    def tail(self, n: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()


def wait_health(url: str, timeout: float, server: Server | None = None) -> dict:
    """Poll GET /health every 0.5 s until it answers 200 (or the server process dies, or time runs out)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server and server.proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.proc.returncode}:\n{server.tail()}")
        try:
            r = httpx.get(url + "/health", timeout=2.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    tail = server.tail() if server else ""
    raise RuntimeError(f"{url}/health did not answer within {timeout:.0f} s\n{tail}")


# ---------------------------------------------------------------------- the clients
@dataclass
class Result:
    tokens: int = 0  # completion tokens (usage, else content chunks)
    chunks: int = 0  # content deltas received
    ttft: float = float("nan")  # request sent → first content delta, seconds
    total: float = float("nan")  # request sent → stream closed
    error: str | None = None
    text: list[str] = field(default_factory=list)


def stream_chat(client, url: str, prompt: str, tokens: int, ignore_eos: bool, timeout: float) -> Result:
    body = {
        "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    if ignore_eos:
        body["ignore_eos"] = True
    res, usage = Result(), None
    t0 = time.perf_counter()
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                res.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return res
            for line in r.iter_lines():
                if time.perf_counter() - t0 > timeout:
                    res.error = f"stream still open after {timeout:.0f} s"
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if msg.get("usage"):
                    usage = msg["usage"]
                for choice in msg.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if not res.chunks:
                            res.ttft = time.perf_counter() - t0
                        res.chunks += 1
                        res.text.append(piece)
    except Exception as e:  # a client's failure is reported in the table, not raised from a thread
        res.error = f"{type(e).__name__}: {e}"[:200]
        return res
    res.total = time.perf_counter() - t0
    res.tokens = usage["completion_tokens"] if usage else res.chunks
    return res


def run_level(url: str, clients: int, requests: int, tokens: int, ignore_eos: bool, timeout: float) -> dict:
    """`clients` threads start together; each sends `requests` streaming requests one after another."""
    import httpx

    results: list[Result] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            for j in range(requests):
                prompt = PROMPTS[(i + j * clients) % len(PROMPTS)]
                r = stream_chat(client, url, prompt, tokens, ignore_eos, timeout)
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()  # everyone is connected-ready: the clock starts when they all go
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=timeout * requests + 30)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    if any(t.is_alive() for t in threads):
        errors.append("a client thread did not finish in time")
    per_stream = [(r.tokens - 1) / (r.total - r.ttft) for r in ok if r.tokens > 1 and r.total > r.ttft]
    return {
        "clients": clients, "requests": len(results), "ok": len(ok), "errors": errors[:5],
        "tokens": sum(r.tokens for r in ok), "short": sum(r.tokens < tokens for r in ok), "wall_s": wall,
        "agg_tok_s": sum(r.tokens for r in ok) / wall if ok else 0.0,
        "stream_tok_s": median(per_stream), "ttft_p50": percentile([r.ttft for r in ok], 50),
        "ttft_p99": percentile([r.ttft for r in ok], 99),
    }  # fmt: skip


# ---------------------------------------------------------------------- report
def report(levels: list[dict], tokens: int, requests: int, ignore_eos: bool) -> str:
    base = next((lv for lv in levels if lv["clients"] == 1 and lv["agg_tok_s"]), None)
    rows = []
    for lv in levels:
        x = lv["agg_tok_s"] / base["agg_tok_s"] if base else "–"
        rows.append(
            [lv["clients"], f"{lv['ok']}/{lv['requests']}", lv["tokens"], lv["wall_s"], lv["agg_tok_s"], x,
             lv["stream_tok_s"], 1000 * lv["ttft_p50"], 1000 * lv["ttft_p99"],
             "; ".join(lv["errors"]) or (f"{lv['short']} short of {tokens}" if lv["short"] else "")]
        )  # fmt: skip
    headers = [
        "clients", "ok requests", "tokens", "wall s", "aggregate tok/s", "× 1 client",
        "per-stream tok/s (median)", "TTFT p50 ms", "TTFT p99 ms", "notes",
    ]  # fmt: skip
    text = (
        f"## Streaming chat throughput (max_tokens {tokens}, temperature 0, {requests} request(s) per "
        f"client, ignore_eos {'on' if ignore_eos else 'off'})\n\n"
        "aggregate: all completion tokens / wall time from the clients' common start to the last stream "
        "closed. per-stream: a stream's tokens after its first / time after its first. TTFT: request "
        "sent → first content delta (nearest-rank percentiles: with 16 samples p99 is the slowest).\n\n"
        + md_table(headers, rows)
    )
    top = next((lv for lv in levels if lv["clients"] == 16), None)
    if base and top and top["agg_tok_s"]:
        x = top["agg_tok_s"] / base["agg_tok_s"]
        verdict = "met" if x >= GOAL_16_VS_1 else "unmet"
        text += (
            f"\n\nGoal: 16 clients ≥ {GOAL_16_VS_1:.0f}× one client's throughput: **{verdict}** ({x:.2f}×)."
        )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--clients", default="1,4,16", help="concurrency levels, comma-separated (default 1,4,16)"
    )
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens per request (default 128)")
    ap.add_argument("--requests", type=int, default=1, help="requests per client per level (default 1)")
    ap.add_argument("--no-ignore-eos", action="store_true", help="don't send lmforge's ignore_eos extension")
    ap.add_argument("--server-args", default="", help="extra arguments for python -m lmforge.serve")
    ap.add_argument(
        "--url", help="use this running server instead of starting one (e.g. http://127.0.0.1:8000)"
    )
    ap.add_argument("--startup-timeout", type=float, default=180, help="seconds to wait for /health")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one request may take")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where serve.json goes")
    args = ap.parse_args()
    levels_wanted = [int(c) for c in args.clients.split(",")]
    if any(c < 1 for c in levels_wanted) or args.tokens < 1 or args.requests < 1:
        raise SystemExit("--clients, --tokens and --requests must be positive")
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("--url: only a localhost server is benchmarked")
    ignore_eos = not args.no_ignore_eos
    args.out.mkdir(parents=True, exist_ok=True)

    print("# lmforge serve: streaming throughput under concurrency\n")
    print(load_line("start") + "\n", flush=True)
    started = time.perf_counter()
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                server = Server(free_port(), shlex.split(args.server_args), Path(tmp) / "server.log")
                url = server.url
            health = wait_health(url, args.startup_timeout, server)
            print(f"Server: {url} (`python -m lmforge.serve {args.server_args}`), health: "
                  f"{json.dumps({k: v for k, v in health.items() if k != 'engine'})}\n", flush=True)  # fmt: skip
            warm = run_level(url, 1, 1, min(args.tokens, 16), ignore_eos, args.timeout)  # warm-up
            if warm["errors"]:
                raise RuntimeError(f"warm-up request failed: {warm['errors'][0]}")
            levels = []
            for c in levels_wanted:
                lv = run_level(url, c, args.requests, args.tokens, ignore_eos, args.timeout)
                levels.append(lv)
                print(f"  {c} client(s): {lv['agg_tok_s']:.1f} tok/s aggregate, {lv['ok']}/{lv['requests']} ok",
                      file=sys.stderr, flush=True)  # fmt: skip
        except RuntimeError as e:
            raise SystemExit(f"error: {e}") from None
        finally:
            if server:
                server.stop()
    print(report(levels, args.tokens, args.requests, ignore_eos) + "\n")
    print(load_line("end") + f" Total {time.perf_counter() - started:.0f} s.")
    out = {"settings": {k: str(v) for k, v in vars(args).items()}, "levels": levels}
    (args.out / "serve.json").write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
