"""Checkpoints that survive a crash and resume a run exactly.

A checkpoint holds everything the next step depends on: model weights, optimizer moments, the step
counter (the schedule is a function of it), the data loader's position, and every random number
generator's state (Python, NumPy, torch CPU and CUDA). Restore all of them and a resumed run computes the
very same numbers as one that never stopped — bit for bit on a CPU (tests check the loss curves).

Written atomically: the file is written as `step_000123.pt.tmp`, flushed to disk, then renamed; a rename is
atomic on POSIX, so a crash or a full disk while saving leaves the previous checkpoint intact and never a
half-written one under the real name. Loaded with `torch.load(weights_only=True)`: only tensors and plain
containers, never arbitrary pickled code. `keep_last` older checkpoints are deleted after a save succeeds.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PATTERN = re.compile(r"step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or -1],
        "python_version": random.getstate()[0],
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
            "has_gauss": has_gauss, "cached": cached}  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    gauss = None if py[-1] == -1 else py[-1]
    random.setstate((state["python_version"], tuple(int(x) for x in py[:-1]), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints in out_dir, oldest first (temp files are not checkpoints)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], keep_last: int = 3) -> Path:
    """Write state to out_dir/step_{step}.pt atomically; then delete all but the newest keep_last."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step_{step:07d}.pt"
    tmp = final.with_name(final.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: drop the partial file, keep the older checkpoints
        raise
    if keep_last > 0:
        for old in checkpoints(d)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable lmforge checkpoint ({type(e).__name__}: {e})") from None


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load weights, with a clear error when the checkpoint is from another model shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k, got, want = wrong[0]
            detail.append(
                f"{len(wrong)} tensor(s) of another shape, e.g. {k}: checkpoint {got}, model {want}"
            )
        if missing:
            detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise ValueError(f"{path}: checkpoint does not fit this model ({'; '.join(detail)})")
    model.load_state_dict(state)


def checkpoint_tokenizer_name(cfg: dict[str, Any]) -> str | None:
    """Where a run's tokenizer came from: the config's `tokenizer`, else the one its shards' meta.json names."""
    import json

    if cfg.get("tokenizer"):
        return str(cfg["tokenizer"])
    data = cfg.get("data") or []
    candidates = [Path(data[0])] if len(data) == 1 else []
    candidates.append(Path(cfg.get("shards_dir") or Path(cfg.get("out_dir", ".")) / "shards"))
    for d in candidates:
        meta = d / "meta.json"
        if meta.is_file():
            try:
                return json.loads(meta.read_text(encoding="utf-8")).get("tokenizer")
            except (OSError, ValueError):
                return None
    return None


def model_from_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A training checkpoint (`step_*.pt`, or a run folder: its latest one) as an eval-mode Transformer.

    The checkpoint carries its ModelConfig, so no other file is needed for the weights; the tokenizer is
    loaded from where the run took it (`tokenizer` in its config, or its shards' meta.json) when that is
    still there, else `model.tokenizer` is None and the caller gets token ids only.
    """
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import load_tokenizer

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no step_*.pt checkpoint in this folder")
        path = found
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not an lmforge training checkpoint (expected 'model' and 'model_config')")
    model = Transformer(ModelConfig(**state["model_config"]))
    load_model_state(model, state["model"], path)
    model = model.to(dtype).eval()
    name = checkpoint_tokenizer_name(state.get("config") or {})
    try:
        model.tokenizer = load_tokenizer(name) if name else None
    except (OSError, ValueError):
        model.tokenizer = None  # the tokenizer moved since training; the weights are still usable
    return model


# --- the alignment loops ------------------------------------------------------------------------------


@dataclass
class LoopCheckpoints:
    """Checkpoint and resume for the step loops of reward, dpo, ppo, grpo and distill.

    Those loops are not the pretraining Trainer. Each one is ``for step in range(start, total)`` over its
    own state: the trainable tensors (LoRA's adapters, a value or score head, or every weight), the
    optimizer's moments, the log so far, the loop's ``random.Random``, the global RNGs and a loader's
    position. Every ``every`` steps all of it goes to ``out_dir/step_*.pt`` (atomically, as above).
    ``resume`` puts it all back, so a resumed run logs the numbers of one that never stopped (the tests
    compare the logs). Frozen weights are not saved: the run reloads them from the model it names.
    """

    out_dir: str | Path
    every: int = 0  # 0: no checkpoints
    resume: bool = True
    keep_last: int = 2


def _trainable(modules: Sequence[torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p for i, m in enumerate(modules) for n, p in m.named_parameters() if p.requires_grad}


def resume_loop(ck: LoopCheckpoints | None, total: int, modules: Sequence[torch.nn.Module], opt,
                rnd: random.Random | None = None, loader=None) -> tuple[int, list[dict[str, float]]]:  # fmt: skip
    """(first step, log so far) from the latest checkpoint of ck.out_dir; (0, []) for a fresh run."""
    path = latest_checkpoint(ck.out_dir) if ck is not None and ck.resume else None
    if path is None:
        return 0, []
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "trainable" not in state:
        raise ValueError(f"{path}: not a checkpoint of an alignment loop (no 'trainable' tensors)")
    if state["total"] != total:
        raise ValueError(f"{path}: the checkpoint is from a run of {state['total']} steps, this run has {total}; "
                         "use another out_dir, or resume false to start over")  # fmt: skip
    own = _trainable(modules)
    if set(own) != set(state["trainable"]) or any(
        own[k].shape != v.shape for k, v in state["trainable"].items()
    ):
        raise ValueError(f"{path}: the checkpoint's trainable tensors do not fit this run "
                         f"(e.g. {sorted(set(own) ^ set(state['trainable']))[:1] or 'a shape'}): "
                         "another method, rank or target modules?")  # fmt: skip
    with torch.no_grad():
        for k, v in state["trainable"].items():
            own[k].copy_(v)
    opt.load_state_dict(state["optimizer"])
    if rnd is not None:
        rnd.setstate(state["loop_rng"])
    if loader is not None:
        loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    return int(state["step"]), list(state["log"])


def save_loop(ck: LoopCheckpoints | None, step: int, total: int, log: list[dict[str, float]],
              modules: Sequence[torch.nn.Module], opt, rnd: random.Random | None = None,
              loader=None) -> Path | None:  # fmt: skip
    """After ``step`` steps: a checkpoint when ck.every divides step (none after the last step: the run's
    own outputs are written then)."""
    if ck is None or not ck.every or step % ck.every or step >= total:
        return None
    state = {"step": step, "total": total, "log": log, "optimizer": opt.state_dict(), "rng": rng_state(),
             "trainable": {k: p.detach().clone() for k, p in _trainable(modules).items()},
             "loop_rng": rnd.getstate() if rnd is not None else None,
             "loader": loader.state_dict() if loader is not None else None}  # fmt: skip
    return save_checkpoint(ck.out_dir, step, state, ck.keep_last)
