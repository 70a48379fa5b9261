"""Helpers every benchmark script shares: where the data is, Markdown tables, medians, memory."""

from __future__ import annotations

import os
import resource
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The shared data sets: $LMFORGE_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("LMFORGE_DATA") or REPO.parent / "shared" / "data")


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(x) -> str:
        if isinstance(x, float):
            return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
        if isinstance(x, int):
            return f"{x:,}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def load_line(when: str) -> str:
    """The load average as a Markdown line: timings from a busy machine must say so."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count()
    return f"_Load average at {when}: {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {cores} cores._"
