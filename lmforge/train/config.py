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


METHODS = ("full", "lora", "qlora")  # fine-tuning: every weight, LoRA, LoRA on an NF4 base


@dataclass
class FinetuneConfig:
    """A fine-tuning run (lmforge.train.finetune.run_sft): the data, the method, and the Trainer's knobs."""

    # model and data
    model: str = "smollm2-135m-instruct"  # a packaged name, a .gguf file, an HF folder or hub id
    data: list[str] = field(default_factory=list)  # chat data files (JSON / JSONL, optionally .gz)
    format: str = "auto"  # auto, alpaca, sharegpt, openai
    replace: dict[str, str] = field(default_factory=dict)  # placeholder → text, e.g. {"{{name}}": "Forge"}
    val_data: list[str] = field(default_factory=list)  # held-out files; else val_fraction of data
    val_fraction: float = 0.1
    mix_text: str | None = None  # a text file of pretraining text (one document per blank-line block)
    mix_fraction: float = 0.0  # its share of the training examples, against forgetting
    max_length: int = 512  # tokens per example (longer ones are cut)
    pack: bool = True
    # method
    method: str = "lora"
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_rslora: bool = False
    # optimisation (the pretraining Trainer's fields)
    epochs: float = 3.0  # sets max_steps when max_steps is 0
    max_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    device: str = "auto"
    eval_every: int = 20
    log_every: int = 5
    ckpt_every: int = 0  # 0: only at the end
    keep_last: int = 2
    out_dir: str = "runs/sft"
    resume: bool = True
    seed: int = 0
    save_merged: bool = False  # also write the merged model as an HF folder (LoRA / QLoRA)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "qlora" and self.save_merged:
            raise ValueError("save_merged needs a full-precision base: merge the saved adapter into the "
                             "unquantized model instead (lmforge merge)")  # fmt: skip
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ALIGN_METHODS = (
    "lora",
    "full",
    "head",
)  # what trains: LoRA adapters, every weight, or (reward) the head only
DPO_LOSSES = ("sigmoid", "ipo", "hinge")


@dataclass
class AlignConfig:
    """A preference / RL / distillation run (lmforge.train.align): ``lmforge reward|dpo|ppo|grpo|distill``.

    One schema for the five commands, as FinetuneConfig is for sft/lora/qlora; each command reads the
    fields it needs (the DPO fields for dpo, the sampling fields for ppo/grpo, ...)."""

    model: str = "smollm2-135m-instruct"  # the policy / backbone / student
    data: list[str] = field(default_factory=list)  # preference pairs (reward, dpo), chat data (ppo, distill)
    heldout: int = 100  # held-out pairs / prompts / examples: the first N after a seeded shuffle
    limit: int = 0  # train on at most N of the rest (0: all)
    max_length: int = 384
    method: str = "lora"
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_rslora: bool = False
    epochs: float = 1.0
    steps: int = 50  # ppo / grpo: policy updates
    batch_size: int = 4
    lr: float = 5e-5
    l2: float = 1.0  # reward --method head: the head's L2 penalty
    eval_every: int = 0  # held-out evaluation every N steps (0: five times a run; always at start and end)
    # dpo
    beta: float = 0.1  # dpo: the KL strength; grpo: the KL coefficient (0: none)
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    # ppo / grpo
    reward_model: str | None = None  # ppo: an `lmforge reward` output folder
    task: str = "arithmetic"  # grpo: the verifiable task
    group_size: int = 8
    prompts_per_step: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    kl_coef: float = 0.05
    missing_eos_penalty: float = 0.0  # ppo: subtracted from the score of a reply that never ended
    # distill
    teacher: str | None = None
    kd_temperature: float = 2.0
    seq_len: int = 256
    out_dir: str = "runs/align"
    ckpt_every: int = (
        0  # a checkpoint (trainables, optimizer, log, RNGs) every N steps in out_dir/checkpoints
    )
    resume: bool = True  # continue from out_dir/checkpoints' latest checkpoint when there is one
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ALIGN_METHODS:
            raise ValueError(f"method must be one of {', '.join(ALIGN_METHODS)}, got {self.method!r}")
        if self.loss not in DPO_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(DPO_LOSSES)}, got {self.loss!r}")
        if self.heldout < 0:
            raise ValueError(f"heldout must be >= 0, got {self.heldout}")

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


def _hints(cls: type = TrainConfig) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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


def config_from_dict(values: dict[str, Any], where: str = "config", cls: type = TrainConfig) -> Any:
    """A TrainConfig (or FinetuneConfig) from a mapping; unknown fields and wrong types are errors that
    name the field."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of field: value, got {type(values).__name__}")
    hints = _hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(hints)}"
        )
    checked = {k: _check(k, v, hints[k], where) for k, v in values.items()}
    return cls(**checked)


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None, cls: type = TrainConfig
) -> Any:
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
        config_from_dict(values, str(path), cls)  # check the file on its own, so errors name it
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values, str(path) if path else "config", cls)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One --flag per field of the config dataclass (default None: 'not given', so the file's value stands)."""
    for f in fields(cls):
        hint = _hints(cls)[f.name]
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


def overrides_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in fields(cls)}
