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
    from lmforge.data import PackedLoader, RandomWindowLoader, TokenShards
    from lmforge.train.distributed import wrap_model
    from lmforge.train.optim import AdamW, build_optimizers, param_groups
    from lmforge.train.schedules import make_schedule

    if cfg.objective == "span" and cfg.loader == "packed":
        raise ValueError("objective span reads random windows (as T5 does): use loader random, not packed")
    device = resolve_device(cfg.device)
    shards_dir = prepare_shards(cfg)
    train, val = TokenShards(shards_dir, "train"), TokenShards(shards_dir, "val")
    tokenizer = _shards_tokenizer(shards_dir, cfg)
    vocab = int(train.meta["vocab_size"])
    torch.manual_seed(cfg.seed)
    model, batch_fn = build_objective(cfg, vocab, train.eos_id, tokenizer)
    model = model.to(device)
    if cfg.activation_checkpointing:
        _checkpoint_blocks(model)
    model.tokenizer = tokenizer
    rank, size = (0, 1) if world is None else (world.rank, world.size)

    def loader(split: TokenShards, seed: int):
        if cfg.loader == "packed":
            return PackedLoader(split, cfg.batch_size, cfg.seq_len, seed=seed, rank=rank, world_size=size,
                                return_segments=True)  # fmt: skip
        return RandomWindowLoader(split, cfg.batch_size, cfg.seq_len, seed=seed, rank=rank, world_size=size)

    train_loader = loader(train, cfg.seed)
    # validation needs one window of the held-out split (random), or one document (packed)
    enough = val.num_documents > 0 if cfg.loader == "packed" else val.num_tokens > cfg.seq_len + 1
    val_loader = loader(val, cfg.seed + 1) if enough else None
    if cfg.optimizer == "muon":
        optimizers = build_optimizers(model, cfg.lr, cfg.muon_lr, cfg.weight_decay)
    else:
        optimizers = [AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))]
    schedule = make_schedule(cfg.schedule, max_lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup_steps,
                             total=cfg.max_steps)  # fmt: skip
    wrapped = wrap_model(model, world, cfg.parallel)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return Trainer(cfg, wrapped, optimizers, schedule, train_loader, val_loader, tokenizer, batch_fn, world)


def build_objective(cfg: TrainConfig, vocab: int, eos_id: int | None, tokenizer=None):
    """(model, batch_fn) of the run's objective; batch_fn turns a loader's tensors into the model's batch.

    - clm: a causal Transformer; the batch is (x, y) as the loader cut it. Packed rows add position_ids
      that restart at each document and segment_ids that keep documents from attending to each other.
    - mlm: the same Transformer without the causal mask (an encoder); 80/10/10 masking of x (BERT). The
      [MASK] id is the tokenizer's when it has one, else one extra id past the vocabulary.
    - span: a T5-style EncoderDecoder; x's spans are replaced by sentinels (extra ids past the
      vocabulary), the decoder is taught to write them out (teacher forcing: targets shifted right).
    Masks and spans are drawn from torch's global RNG, which checkpoints save: resume stays exact.
    """
    from lmforge.data import MaskingInfo, mlm_mask, span_corruption, span_corruption_lengths
    from lmforge.model.transformer import Transformer

    if cfg.objective == "clm":
        model = Transformer(model_config(cfg, vocab)).init_weights()
        return model, (packed_batch if cfg.loader == "packed" else None)
    if cfg.objective == "mlm":
        mask_id = tokenizer.token_to_id("[MASK]") if tokenizer is not None else None
        info = MaskingInfo(vocab if mask_id is None else mask_id, vocab,
                           tuple(i for i in (eos_id, mask_id) if i is not None))  # fmt: skip
        model = Transformer(model_config(cfg, vocab + (mask_id is None))).init_weights()

        def mlm_batch(x, y, segments=None, positions=None):
            inputs, labels = mlm_mask(x, info)
            if segments is not None:
                labels[segments < 0] = -100  # padding is never a target
                return {
                    "input_ids": inputs,
                    "labels": labels,
                    "segment_ids": segments,
                    "position_ids": positions,
                }
            return {"input_ids": inputs, "labels": labels}

        return model, mlm_batch
    # span corruption: as many sentinels as a window of seq_len tokens has spans, plus the closing one
    _, num_spans, _ = span_corruption_lengths(cfg.seq_len)
    sentinels = list(range(vocab, vocab + num_spans + 1))
    start = eos_id if eos_id is not None else 0  # the decoder's first input (BART starts with </s> too)
    model = _encoder_decoder(cfg, vocab + len(sentinels), start).init_weights()

    def span_batch(x, y):
        inputs, targets = span_corruption(x, sentinels)  # (B, S), (B, T)
        decoder_inputs = torch.cat([torch.full_like(targets[:, :1], start), targets[:, :-1]], dim=1)
        return {"input_ids": inputs, "decoder_input_ids": decoder_inputs, "labels": targets}

    return model, span_batch


def _encoder_decoder(cfg: TrainConfig, vocab: int, decoder_start: int):
    """A fresh T5-style encoder–decoder at the run's size: the preset and depth dial give the width and
    the number of layers of *each* stack; positions come from T5's relative bias (no RoPE)."""
    from dataclasses import replace

    from lmforge.model.encoder_decoder import EncoderDecoder

    base = model_config(cfg, vocab)
    extra = {"relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
             "n_decoder_layers": base.n_layers, "decoder_start_token_id": decoder_start}  # fmt: skip
    return EncoderDecoder(replace(base, position="none", causal=False, extra={**base.extra, **extra}))


def packed_batch(x, y, segments, positions) -> dict[str, torch.Tensor]:
    """The batch of a packed loader (pretraining or SFT): the model also gets segment and position ids."""
    return {"input_ids": x, "labels": y, "segment_ids": segments, "position_ids": positions}


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
