"""Scaling laws: how the loss falls with model size N and data D, and what size a compute budget calls for.

Hoffmann et al. 2022 ("Chinchilla", approach 3) model the final loss of a run with N parameters trained on
D tokens as

    L(N, D) = E + A / N^α + B / D^β

E is the entropy of text that no model removes; A/N^α is what a finite model cannot represent, B/D^β what
finite data cannot teach. `fit_chinchilla` fits the five numbers as they did: in log space,
log L ≈ LSE(a − α log N, b − β log D, e) with A = eᵃ, B = eᵇ, E = eᵉ, under a Huber loss (δ = 1e-3: robust
to the odd bad run), by L-BFGS from the best points of a grid of initialisations (the objective has many
local minima). `run_grid` trains the grid of model sizes × token budgets with the ordinary trainer and fits it.

The compute-optimal frontier: a run costs C ≈ 6·N·D FLOPs (Kaplan et al. 2020). Minimising L under that
constraint gives, with G = (αA / (βB))^(1/(α+β)),

    N_opt(C) = G · (C/6)^(β/(α+β)),    D_opt(C) = (C/6)^(α/(α+β)) / G

N counts the non-embedding parameters (Kaplan et al.): at the tiny sizes a CPU can sweep, the embedding
table is most of the model and would hide the trend.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lmforge.train.config import TrainConfig


@dataclass
class ScalingFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    huber: float  # the objective at the optimum (sum over points)

    def predict(self, N: float | torch.Tensor, D: float | torch.Tensor) -> float | torch.Tensor:
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal(self, C: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising predict(N, D) subject to 6·N·D = C."""
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1 / (a + b))
        return G * (C / 6) ** (b / (a + b)), (C / 6) ** (a / (a + b)) / G


def _huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.where(r.abs() <= delta, 0.5 * r**2, delta * (r.abs() - 0.5 * delta))


def _objective(theta: torch.Tensor, logN: torch.Tensor, logD: torch.Tensor, logL: torch.Tensor,
               delta: float) -> torch.Tensor:  # fmt: skip
    """Huber loss of the log-space Chinchilla form, summed over points; theta (..., 5) = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta.unbind(-1)
    terms = torch.stack(
        [
            a[..., None] - alpha[..., None] * logN,  # (..., P)
            b[..., None] - beta[..., None] * logD,
            e[..., None].expand(*e.shape, logN.numel()),
        ]
    )
    pred = torch.logsumexp(terms, dim=0)  # (..., P)
    return _huber(pred - logL, delta).sum(-1)


def fit_chinchilla(N: Sequence[float], D: Sequence[float], L: Sequence[float], delta: float = 1e-3,
                   starts: int = 16) -> ScalingFit:  # fmt: skip
    """Fit L(N, D) = E + A/N^α + B/D^β to runs with N parameters, D tokens and final loss L.

    Chinchilla's grid of initialisations (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25})
    is scored in one batched evaluation; L-BFGS then refines the `starts` best and the lowest optimum wins.
    """
    if not len(N) == len(D) == len(L):
        raise ValueError(f"N, D and L must have the same length, got {len(N)}, {len(D)}, {len(L)}")
    if len(N) < 5:
        raise ValueError(f"the fit has 5 parameters: it needs at least 5 runs, got {len(N)}")
    values = torch.tensor([list(N), list(D), list(L)], dtype=torch.float64)
    if not torch.isfinite(values).all() or (values <= 0).any():
        raise ValueError("N, D and L must all be positive and finite")
    logN, logD, logL = values.log()
    ab = torch.arange(0.0, 26.0, 5.0, dtype=torch.float64)
    e = torch.arange(-1.0, 1.01, 0.5, dtype=torch.float64)
    ex = torch.arange(0.0, 2.01, 0.5, dtype=torch.float64)
    grid = torch.cartesian_prod(ab, ab, e, ex, ex)  # (K, 5) = (a, b, e, α, β)
    scores = _objective(grid, logN, logD, logL, delta)
    best: tuple[float, torch.Tensor] | None = None
    for init in grid[scores.argsort()[:starts]]:
        theta = init.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure(opt=opt, theta=theta):  # bind this start's tensors, not the loop's last
            opt.zero_grad()
            loss = _objective(theta, logN, logD, logL, delta)
            loss.backward()
            return loss

        opt.step(closure)
        value = float(_objective(theta.detach(), logN, logD, logL, delta))
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, theta.detach().clone())
    assert best is not None
    a, b, e_, alpha, beta = best[1].tolist()
    return ScalingFit(E=math.exp(e_), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, huber=best[0])


# ------------------------------------------------------------------------------------------ the grid


def run_grid(base: TrainConfig, depths: Sequence[int], steps: Sequence[int], out_dir: str | Path,
             progress: bool = True) -> tuple[list[dict[str, Any]], ScalingFit | None]:  # fmt: skip
    """Train every (depth, steps) pair of the grid from `base` and fit the Chinchilla form to the results.

    Each run has its own folder and a cosine schedule matched to its own length (Chinchilla's point:
    a schedule longer than the run overstates its loss). Rows go to out_dir/grid.jsonl as each run ends,
    so a stopped grid continues where it was (finished runs are read back, not trained again).
    """
    from lmforge.train.pretrain import build_run, prepare_shards

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "grid.jsonl"
    finished = read_rows(rows_path)
    if finished:  # rewrite without a line a crash cut short, so that new rows append cleanly
        tmp = rows_path.with_name(rows_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in finished), encoding="utf-8")
        tmp.replace(rows_path)
    done = {(r["depth"], r["steps"]): r for r in finished}
    base = replace(base, shards_dir=base.shards_dir or str(out / "shards"))
    shards = str(prepare_shards(base))  # tokenize once; every run reads the same shards
    rows = []
    for depth in depths:
        for n_steps in steps:
            if (depth, n_steps) in done:
                rows.append(done[(depth, n_steps)])
                continue
            cfg = replace(
                base, data=[shards], depth=depth, max_steps=n_steps, warmup_steps=min(base.warmup_steps, n_steps // 5),
                schedule="cosine", eval_every=n_steps, ckpt_every=0, keep_last=1, resume=False,
                out_dir=str(out / f"d{depth}_s{n_steps}"), max_minutes=None,
            )  # fmt: skip
            trainer = build_run(cfg)
            summary = trainer.fit(progress=False)
            model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
            if "val_loss" not in summary:
                raise ValueError(
                    "the scaling grid needs a validation split: the corpus has too few documents"
                )
            row = {
                "depth": depth,
                "steps": n_steps,
                "N": model.num_params(non_embedding=True),
                "params": model.num_params(),
                "D": n_steps * cfg.batch_size * cfg.seq_len * cfg.grad_accum,
                "val_loss": summary["val_loss"],
                "seconds": summary["seconds"],
            }
            # one line per finished run: a crash keeps the rest
            with open(rows_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            rows.append(row)
            if progress:
                print(f"depth {depth}, {n_steps} steps: N {row['N']:,}, D {row['D']:,}, "
                      f"val loss {row['val_loss']:.4f} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    if len(rows) < 5:
        return rows, None  # too few runs to fit five numbers
    return rows, fit_chinchilla([r["N"] for r in rows], [r["D"] for r in rows], [r["val_loss"] for r in rows])


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    rows, lines = [], path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break  # a last line cut short by a crash: that run is trained again
            raise ValueError(f"{path}:{i}: not a JSON row of a finished run") from None
    return rows


def plot_scaling(rows: list[dict[str, Any]], fit: ScalingFit, path: str | Path) -> Path:
    """Two panels: loss against tokens (one curve per model size, the fit dashed), and the compute-optimal
    frontier N_opt(C) with the grid's runs placed at their compute. Written atomically (temp + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = sorted({r["N"] for r in rows})
    colors = plt.cm.viridis([i / max(1, len(sizes) - 1) for i in range(len(sizes))])
    d_min, d_max = min(r["D"] for r in rows), max(r["D"] for r in rows)
    ds = torch.logspace(math.log10(d_min / 1.5), math.log10(d_max * 1.5), 50, dtype=torch.float64)
    for n, c in zip(sizes, colors, strict=True):
        pts = sorted((r["D"], r["val_loss"]) for r in rows if r["N"] == n)
        left.plot(*zip(*pts, strict=True), "o", color=c, label=f"N = {n / 1e6:.2f}M")
        left.plot(ds, fit.predict(float(n), ds), "--", color=c, lw=1)
    left.set(xscale="log", xlabel="training tokens D", ylabel="validation loss (nats/token)",
             title=f"L = {fit.E:.2f} + {fit.A:.3g}/N^{fit.alpha:.2f} + {fit.B:.3g}/D^{fit.beta:.2f}")  # fmt: skip
    left.legend(fontsize=8)
    cs = [6 * r["N"] * r["D"] for r in rows]
    grid_c = torch.logspace(math.log10(min(cs) / 3), math.log10(max(cs) * 30), 50, dtype=torch.float64)
    right.plot(grid_c, [fit.optimal(float(c))[0] for c in grid_c], "k-", label="compute-optimal N")
    sc = right.scatter(cs, [r["N"] for r in rows], c=[r["val_loss"] for r in rows], cmap="magma")
    fig.colorbar(sc, ax=right, label="validation loss")
    right.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="non-embedding parameters N",
              title="the frontier and the grid's runs")  # fmt: skip
    right.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def table(rows: list[dict[str, Any]], fit: ScalingFit | None) -> str:
    """The grid and the fit as Markdown."""
    lines = ["| depth | steps | N (non-emb.) | params | D tokens | val loss | fit | seconds |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        pred = f"{fit.predict(float(r['N']), float(r['D'])):.4f}" if fit else ""
        lines.append(f"| {r['depth']} | {r['steps']} | {r['N']:,} | {r['params']:,} | {r['D']:,} | "
                     f"{r['val_loss']:.4f} | {pred} | {r['seconds']:.0f} |")  # fmt: skip
    if fit:
        lines += ["", f"L(N, D) = {fit.E:.3f} + {fit.A:.4g} / N^{fit.alpha:.3f} + {fit.B:.4g} / D^{fit.beta:.3f}",
                  "", "| compute C (FLOPs) | N_opt | D_opt | tokens per parameter |", "|---:|---:|---:|---:|"]  # fmt: skip
        # the budgets the grid spans, and one decade past it: further out is extrapolation, not measurement
        cs = [6 * r["N"] * r["D"] for r in rows]
        lo, hi = math.floor(math.log10(min(cs))), math.ceil(math.log10(max(cs))) + 1
        for k in range(lo, hi + 1):
            n, d = fit.optimal(10.0**k)
            lines.append(f"| 1e{k} | {n:,.0f} | {d:,.0f} | {d / n:.1f} |")
    return "\n".join(lines)
