"""SFT with LoRA on SmolLM2-135M-Instruct: teach it a new name without losing what it knows.

Data: ``chat/identity.json`` with its placeholders filled ({{name}} → --name, {{author}} → --author), split
80/20 with a fixed seed, plus --alpaca examples of ``alpaca_en_demo.json`` (the first ones train, the last
--alpaca-val are held out) so the model keeps following ordinary instructions. The identity questions are
few and must be learned, the Alpaca rows many and must not be memorised: so the identity rows appear
--identity-repeat times in an epoch and the Alpaca rows once (a data mix's weights, as LLaMA-Factory's
``interleave_probs``), rather than many epochs of both, which overfit the held-out Alpaca loss upwards. LoRA on every linear layer
(r 16, alpha 32), loss on the assistant's tokens only, packed rows.

Reported, before → after:
- held-out loss on the identity questions and on the held-out Alpaca examples;
- the share of held-out identity questions whose greedy answer states the new name;
- ARC-Easy accuracy (our evaluation harness, 0-shot, the first --arc questions), the forgetting check.

    python bench/bench_sft.py                   # ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import data_dir, load_line, md_table  # noqa: E402

from lmforge import generate, load_model  # noqa: E402
from lmforge.data.chat import read_conversations  # noqa: E402
from lmforge.eval.harness import Evaluator  # noqa: E402
from lmforge.eval.tasks import BUILTIN  # noqa: E402
from lmforge.train.config import FinetuneConfig  # noqa: E402
from lmforge.train.finetune import run_sft  # noqa: E402
from lmforge.train.lora import merge_lora, unmerge_lora  # noqa: E402
from lmforge.train.pretrain import packed_batch  # noqa: E402
from lmforge.train.sft import SFTLoader, tokenize_all  # noqa: E402
from lmforge.train.trainer import lm_loss  # noqa: E402


@torch.inference_mode()
def held_out_loss(model, tok, convs) -> float:
    """Mean cross-entropy per assistant token, one conversation per row."""
    ex = tokenize_all(tok, convs, 512)
    nats, n = 0.0, 0
    for e in ex:
        b = packed_batch(*SFTLoader([e], 1, len(e) - 1, 0, pad_id=tok.eos_id).next_batch())
        k = int((b["labels"] != -100).sum())
        nats += float(lm_loss(model, b)) * k
        n += k
    return nats / n


def says_name(model, questions, name: str) -> tuple[float, list[str]]:
    """The share of greedy answers that contain the name as a word ("Forge", not the "forge" in "lmforge")."""
    answers = [
        generate(model, [{"role": "user", "content": q}], max_tokens=40, temperature=0) for q in questions
    ]
    word = re.compile(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])", re.IGNORECASE)
    return sum(bool(word.search(a)) for a in answers) / len(answers), answers


def arc_easy(model, limit: int) -> float:
    ev = Evaluator(model, progress=False)
    return ev.run(BUILTIN["arc_easy"], data_dir(), limit=limit)["metrics"]["acc"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="Forge")
    ap.add_argument("--author", default="the lmforge team")
    ap.add_argument("--alpaca", type=int, default=400, help="Alpaca examples trained on")
    ap.add_argument("--alpaca-val", type=int, default=100, help="Alpaca examples held out")
    ap.add_argument("--identity-repeat", type=int, default=8, help="copies of each identity row per epoch")
    ap.add_argument("--arc", type=int, default=500, help="ARC-Easy questions (0: all 2,376)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="bench/out/sft.json")
    args = ap.parse_args()
    print(load_line("start"))
    chat = data_dir() / "chat"
    repl = {"{{name}}": args.name, "{{author}}": args.author}
    identity = read_conversations(chat / "identity.json", replacements=repl)
    order = list(range(len(identity)))
    random.Random(0).shuffle(order)
    n_val = round(0.2 * len(identity))
    id_val = [identity[i] for i in order[:n_val]]
    id_train = [identity[i] for i in order[n_val:]]
    alpaca = read_conversations(chat / "alpaca_en_demo.json")
    al_train, al_val = alpaca[: args.alpaca], alpaca[-args.alpaca_val :]

    model = load_model("smollm2-135m-instruct")
    tok = model.tokenizer
    questions = [c[0]["content"] for c in id_val]
    t0 = time.perf_counter()
    before = {
        "identity loss": held_out_loss(model, tok, id_val),
        "alpaca loss": held_out_loss(model, tok, al_val),
    }
    before["states the name"], answers_before = says_name(model, questions, args.name)
    before["ARC-Easy acc"] = arc_easy(model, args.arc or None)
    eval_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, convs in (("train", id_train * args.identity_repeat + al_train), ("val", id_val + al_val)):
            files[name] = Path(tmp) / f"{name}.jsonl"
            files[name].write_text(
                "".join(json.dumps({"messages": c}) + "\n" for c in convs), encoding="utf-8"
            )
        cfg = FinetuneConfig(
            data=[str(files["train"])], val_data=[str(files["val"])], method="lora", lora_r=16, lora_alpha=32,
            epochs=args.epochs, lr=args.lr, batch_size=4, max_length=256, eval_every=30, log_every=5,
            out_dir=str(Path(args.out).with_suffix("")) + "_run", resume=False, device="cpu",
        )  # fmt: skip
        t1 = time.perf_counter()
        summary = run_sft(cfg, progress=True, model=model, tokenizer=tok)
        train_s = time.perf_counter() - t1

    merge_lora(model)  # same outputs, one matmul per layer: the evaluation runs faster
    after = {
        "identity loss": held_out_loss(model, tok, id_val),
        "alpaca loss": held_out_loss(model, tok, al_val),
    }
    after["states the name"], answers_after = says_name(model, questions, args.name)
    after["ARC-Easy acc"] = arc_easy(model, args.arc or None)
    unmerge_lora(model)

    print(f"\n### LoRA SFT of SmolLM2-135M-Instruct on identity ({len(id_train)} train × {args.identity_repeat} / "
          f"{len(id_val)} held out) + Alpaca ({len(al_train)} / {len(al_val)}), lr {args.lr}, {args.epochs} epochs\n")  # fmt: skip
    rows = []
    for k in before:
        fmt = "{:.1%}" if k in ("states the name", "ARC-Easy acc") else "{:.3f}"
        rows.append([k, fmt.format(before[k]), fmt.format(after[k]), f"{after[k] - before[k]:+.3f}"])
    print(md_table(["held out", "before", "after", "change"], rows))
    n_arc = args.arc or 2376
    print(f"\nARC-Easy on {n_arc} questions (standard error ≈ {((0.55 * 0.45) / n_arc) ** 0.5:.1%}); "
          f"{summary['trainable_params'] / 1e6:.2f}M trainable parameters, {summary['step']} steps, "
          f"training {train_s:.0f} s at {summary.get('tokens_per_s', 0):.0f} tokens/s; one evaluation pass {eval_s:.0f} s")  # fmt: skip
    for q, a, b in list(zip(questions, answers_before, answers_after))[:5]:
        print(f"\n> {q}\n- before: {a.strip()[:120]}\n- after: {b.strip()[:120]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"before": before, "after": after, "summary": summary,
                                          "answers": list(zip(questions, answers_before, answers_after))},
                                         indent=2, default=str))  # fmt: skip
    print(load_line("end"))


if __name__ == "__main__":
    main()
