"""`lmforge pretrain`: a TrainConfig in, a trained model (checkpoints, metrics, loss plot) out.

The stages, each its own module: text → token shards (lmforge.data), shards → batches (a loader whose
position is saved in checkpoints), a model from a preset + depth (trainer.model_config), optimizers
(optim.py: AdamW, or Muon + AdamW) and a learning-rate schedule (schedules.py), then Trainer.fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer, model_config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no GPU")
    return torch.device(name)


def prepare_shards(cfg: TrainConfig) -> Path:
    """The shard folder of the run: `data` itself when it is one, else the corpus tokenized into
    shards_dir (resumable: finished shards are kept)."""
    from lmforge.data import tokenize_corpus
    from lmforge.tokenizer import load_tokenizer

    if not cfg.data:
        raise ValueError("no training data: set `data` (corpus files, folders, globs, or a shard folder)")
    if len(cfg.data) == 1 and (Path(cfg.data[0]) / "meta.json").is_file():
        return Path(cfg.data[0])
    if cfg.tokenizer is None:
        raise ValueError("`data` is raw text: set `tokenizer` (a name, a path, or a trained tokenizer file)")
    out = Path(cfg.shards_dir or Path(cfg.out_dir) / "shards")
    tokenize_corpus(cfg.data, load_tokenizer(cfg.tokenizer), out, seed=cfg.seed, tokenizer_name=cfg.tokenizer)
    return out


def build_run(cfg: TrainConfig, world=None) -> Trainer:
    """Everything a Trainer needs, from the config (one place: the CLI, the speedrun and tests use it)."""
    from lmforge.data import RandomWindowLoader, TokenShards
    from lmforge.model.transformer import Transformer
    from lmforge.train.distributed import wrap_model
    from lmforge.train.optim import AdamW, build_optimizers, param_groups
    from lmforge.train.schedules import make_schedule

    if cfg.objective != "clm" or cfg.loader != "random":
        raise ValueError(
            f"objective {cfg.objective!r} with loader {cfg.loader!r}: only objective clm with the random-window "
            "loader is built so far (masked LM, span corruption and best-fit packing are not yet)"
        )
    device = resolve_device(cfg.device)
    shards_dir = prepare_shards(cfg)
    train, val = TokenShards(shards_dir, "train"), TokenShards(shards_dir, "val")
    tokenizer = _shards_tokenizer(shards_dir, cfg)
    vocab = int(train.meta["vocab_size"])
    torch.manual_seed(cfg.seed)
    model = Transformer(model_config(cfg, vocab)).init_weights().to(device)
    if cfg.activation_checkpointing:
        _checkpoint_blocks(model)
    model.tokenizer = tokenizer
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    train_loader = RandomWindowLoader(
        train, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=rank, world_size=size
    )
    val_loader = RandomWindowLoader(val, cfg.batch_size, cfg.seq_len, seed=cfg.seed + 1, rank=rank,
                                    world_size=size) if val.num_tokens > cfg.seq_len + 1 else None  # fmt: skip
    if cfg.optimizer == "muon":
        optimizers = build_optimizers(model, cfg.lr, cfg.muon_lr, cfg.weight_decay)
    else:
        optimizers = [AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))]
    schedule = make_schedule(cfg.schedule, max_lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup_steps,
                             total=cfg.max_steps)  # fmt: skip
    wrapped = wrap_model(model, world, cfg.parallel)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return Trainer(cfg, wrapped, optimizers, schedule, train_loader, val_loader, tokenizer, world=world)


def _shards_tokenizer(shards_dir: Path, cfg: TrainConfig):
    from lmforge.tokenizer import load_tokenizer

    name = cfg.tokenizer
    if name is None:
        import json

        meta = json.loads((shards_dir / "meta.json").read_text(encoding="utf-8"))
        name = meta.get("tokenizer")
    try:
        return load_tokenizer(name) if name else None
    except Exception:  # the shards' tokenizer moved: train without bpb and samples rather than fail
        return None


def _checkpoint_blocks(model) -> None:
    """Activation checkpointing: keep only each block's input, recompute its insides during backward
    (Chen et al. 2016): memory for activations drops from O(layers · block) to O(layers), ~1/3 more compute."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        forward = block.forward
        block.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def run_pretrain(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    from lmforge.train.distributed import init_world, shutdown

    world = init_world(cfg.device)
    try:
        trainer = build_run(cfg, world)
        if cfg.resume and trainer.resume() and trainer.is_main:
            print(f"resumed from step {trainer.step} ({cfg.out_dir})", flush=True)
        summary = trainer.fit(progress=progress)
        if trainer.is_main and trainer.tokenizer is not None:
            summary["sample"] = trainer.sample()
        return summary
    finally:
        shutdown(world)
