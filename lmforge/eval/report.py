"""Results out: JSON (everything, per row included), a Markdown table, a bar chart, and side by side models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# the headline metric of each kind, shown first and plotted
HEADLINE = {"wikitext": "word_perplexity", "lambada": "acc", "gsm8k": "exact_match_flexible"}


def headline(result: dict[str, Any]) -> str:
    m = result["metrics"]
    if result["task"] in HEADLINE:
        return HEADLINE[result["task"]]
    return "acc_norm" if "acc_norm" in m else next(k for k in m if not k.endswith("_stderr"))


def _fmt(name: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    if "perplexity" in name or name in ("bits_per_byte", "max_len"):
        return f"{value:.4g}"
    return f"{100 * value:.2f}"  # accuracies in points, as papers report them


def markdown(results: list[dict[str, Any]], model: str = "") -> str:
    """One row per task and metric: value ± standard error (accuracies in percentage points)."""
    lines = [
        f"| task | n | shots | metric | {model or 'value'} | ± stderr |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        for name, value in r["metrics"].items():
            if name.endswith("_stderr") or name == "max_len":
                continue
            err = r["metrics"].get(name + "_stderr", float("nan"))
            lines.append(
                f"| {r['task']} | {r['n']} | {r['num_fewshot']} | {name} | {_fmt(name, value)} | {_fmt(name, err)} |"
            )
    return "\n".join(lines)


def compare(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Several models (or checkpoints, or quantizations) side by side on their common tasks."""
    names = list(runs)
    by_task = [{r["task"]: r for r in results} for results in runs.values()]
    tasks = [t for t in by_task[0] if all(t in b for b in by_task)]
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for t in tasks:
        m = headline(by_task[0][t])
        cells = []
        for b in by_task:
            v, e = b[t]["metrics"][m], b[t]["metrics"].get(m + "_stderr", float("nan"))
            cells.append(f"{_fmt(m, v)} ± {_fmt(m, e)}")
        lines.append(f"| {t} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Grouped bars of each task's headline accuracy (perplexities are left out: another scale), with
    standard-error whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in next(iter(runs.values())) if "perplexity" not in headline(r)]
    tasks = [r["task"] for r in first]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(runs) / 2)), 4))
    for i, (name, results) in enumerate(runs.items()):
        by = {r["task"]: r for r in results}
        vals, errs = [], []
        for t in tasks:
            r = by.get(t)
            m = headline(r) if r else None
            vals.append(100 * r["metrics"][m] if r else 0)
            errs.append(100 * r["metrics"].get(m + "_stderr", 0) if r else 0)
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({headline(r)})" for t, r in zip(tasks, first)], fontsize=8)
    ax.set_ylabel("score (%)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(
    results: list[dict[str, Any]], out_dir: str | Path, model: str, info: dict[str, Any]
) -> dict[str, Path]:
    """results.json (per-row scores included), results.md and results.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"model": model, **info, "results": results}, indent=1), encoding="utf-8")
    tmp.replace(paths["json"])
    paths["md"].write_text(f"# {model}\n\n" + markdown(results, model) + "\n", encoding="utf-8")
    if any("perplexity" not in headline(r) for r in results):
        bar_chart({model: results}, paths["png"])
    else:
        paths.pop("png")
    return paths


def load(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(model name, results) from a results.json (or the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return data["model"], data["results"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{p}: not an lmforge eval results.json ({e})") from None
