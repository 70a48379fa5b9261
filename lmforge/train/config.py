"""A pretraining run, described by one plain dataclass: every field has a default, a YAML file can set any
of them, and the command line can override any of them (`--lr 3e-4`, `--max-steps 200`).

No config framework: `TrainConfig` is the whole schema, `load_config` reads YAML/JSON and checks each
value's type against the field's annotation (an unknown field or a wrong type is an error that names it),
and `add_config_arguments` makes one `--flag` per field for argparse.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    # data: a folder of token shards (lmforge.data.tokenize_corpus) or corpus files to tokenize first
    data: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # name/path; needed when `data` is raw text (shards remember theirs)
    shards_dir: str | None = None  # where raw text is tokenized to (default: out_dir/shards)
    loader: str = "random"  # "random" windows (nanoGPT) or best-fit "packed" documents
    objective: str = "clm"  # "clm" next token; "mlm" masked LM (encoder); "span" span corruption (T5)

    # model: a preset of lmforge.model.presets, then the depth dial, then explicit overrides
    model: str = "llama"
    depth: int | None = None  # nanochat's one dial: n_layers = depth, dim = 64·depth, heads of 64
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any ModelConfig field
    seq_len: int = 256

    # batch: batch_size sequences per micro-step per process, grad_accum micro-steps per update
    batch_size: int = 12
    grad_accum: int = 1

    # optimization
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for hidden matrices, AdamW for the rest)
    lr: float = 1e-3
    min_lr: float = 1e-4
    muon_lr: float = 0.02
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    schedule: str = "cosine"  # "cosine", "wsd" (warmup-stable-decay) or "constant"
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0: no clipping
    max_steps: int = 1000
    max_minutes: float | None = None  # stop early (and checkpoint) after this much wall time

    # precision and speed
    precision: str = "fp32"  # "fp32", "bf16" (autocast, CPU or GPU), "fp16" (autocast + loss scaling, GPU)
    compile: bool = False
    activation_checkpointing: bool = False
    device: str = "auto"  # "auto": cuda when available, else cpu
    parallel: str = "ddp"  # under torchrun: "ddp" (replicate, average gradients) or "fsdp" (shard, ZeRO-3)

    # evaluation, samples and logs
    eval_every: int = 250
    eval_batches: int = 20
    sample_every: int = 0  # 0: only at the end
    sample_prompt: str = ""
    sample_tokens: int = 64
    log_every: int = 10

    # checkpoints
    out_dir: str = "runs/pretrain"
    ckpt_every: int = 500
    keep_last: int = 3
    resume: bool = True  # continue from out_dir's latest checkpoint when there is one

    seed: int = 1337

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CHOICES = {
    "loader": ("random", "packed"),
    "objective": ("clm", "mlm", "span"),
    "optimizer": ("adamw", "muon"),
    "schedule": ("cosine", "wsd", "constant"),
    "precision": ("fp32", "bf16", "fp16"),
    "parallel": ("ddp", "fsdp"),
    "device": ("auto", "cpu", "cuda"),
}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check(name: str, value: Any, hint: Any, where: str) -> Any:
    """value if it fits the annotation `hint` (ints are accepted for floats), else a ValueError naming it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _check(name, value, a, where)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        dict: lambda v: isinstance(v, dict),
    }[origin or hint](value)
    if not ok:
        expected = {list: "a list of strings", dict: "a mapping"}.get(
            origin or hint, (origin or hint).__name__
        )
        raise ValueError(f"{where}: field {name!r} must be {expected}, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"{where}: field {name!r} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    return float(value) if hint is float else value


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """A TrainConfig from a mapping; unknown fields and wrong types are errors that name the field."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of field: value, got {type(values).__name__}")
    hints = _hints()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(hints)}"
        )
    checked = {k: _check(k, v, hints[k], where) for k, v in values.items()}
    return TrainConfig(**checked)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← the YAML/JSON file at `path` (if any) ← overrides (already typed, e.g. from argparse)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml

            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: not valid YAML: {e}") from None
        config_from_dict(values, str(path))  # check the file on its own, so errors name it
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values, str(path) if path else "config")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field (default None: 'not given', so the file's value stands)."""
    for f in fields(TrainConfig):
        hint = _hints()[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        helptext = f"(default {default!r})"
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, nargs="+", default=None, help=helptext)
        elif typing.get_origin(hint) is dict:
            parser.add_argument(flag, type=json.loads, default=None, help=helptext + " as JSON")
        else:
            kind = typing.get_origin(base) or base
            parser.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name), help=helptext)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
