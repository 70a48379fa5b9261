"""LoRA: fine-tune a frozen model through a small low-rank update per matrix, in Hugging Face PEFT's format.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") keeps a pretrained weight W
(out, in) frozen and learns its change as the product of two thin matrices:

    W' = W + s · B A        A (r, in), B (out, r), r ≪ min(in, out),  s = alpha / r
    y  = x W'ᵀ = x Wᵀ + s · (x Aᵀ) Bᵀ        the update costs two thin matmuls, no (out, in) matrix

A starts random (Kaiming-uniform, as PEFT and nn.Linear do) and B at zero, so W' = W at step 0: the
fine-tune starts exactly at the pretrained model, and B's first gradient (which depends on A ≠ 0) is not
zero. Only A and B train: r·(in + out) numbers instead of in·out per matrix, and the optimizer state
shrinks by the same factor. After training, s · B A folds into W (`merge_lora`,
`remove_lora`): the merged model is a plain model again, with no extra cost at inference.

rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA") changes only
the scale: s = alpha / √r. With alpha / r the update's size shrinks as r grows, so large ranks learn no
better than small ones; alpha / √r keeps the learning dynamics stable across ranks.

Interop: `save_peft` writes adapter_config.json + adapter_model.safetensors exactly as PEFT does, in the
family's Hugging Face module names (from lmforge.model.families, the same table export uses), so
`peft.PeftModel.from_pretrained(hf_model, folder)` loads our adapters and `load_peft` loads PEFT's.
Our q/k rows are in Hugging Face's order (the GGUF loader undoes llama.cpp's permutation and export
writes rows unchanged), so lora_B needs no row permutation either.

    cfg = LoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    apply_lora(model, cfg)                      # everything frozen but the new A, B
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    ...train...
    save_peft(model, cfg, "adapter/")           # or: save_hf(remove_lora(model), "merged/")
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from lmforge.fileio import atomic_write_text, read_json
from lmforge.model.export import _atomic_save_file, _inverse
from lmforge.model.families import hf_name_table

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
HF_PREFIX = "base_model.model."  # PeftModel → LoraModel → the transformers model: the keys' first two hops


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + s · dropout(x) Aᵀ Bᵀ."""

    def __init__(
        self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0, use_rslora: bool = False
    ):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be ≥ 1, got {r}")
        self.base = base
        self.base.requires_grad_(False)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        w = base.weight
        # Adapters of a half-precision model stay in float32, as PEFT's autocast_adapter_dtype does: Adam's
        # small updates to bf16 numbers would round away. forward casts them to the input's dtype.
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=dtype, device=w.device))
        # PEFT's init (nn.Linear's own): A random so B gets a gradient; B = 0 so W' = W at step 0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # adapters_disabled(model): the base alone (DPO's reference, for free)

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (merged or not): code that reads `.weight` of a projection keeps working."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta(self) -> torch.Tensor:
        """s · B A (out, in), in the adapters' dtype (float32 or wider): what merge adds to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (B, T, out)
        if self.merged and self.disabled:
            raise RuntimeError("adapters_disabled needs unmerged adapters: unmerge_lora(model) first")
        if self.merged or self.disabled:  # merged: the update is inside base.weight already
            return y
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        h = F.linear(self.dropout(x), a)  # (B, T, r)
        # y + s · h Bᵀ as one GEMM that accumulates into y (addmm, β = 1): no (B, T, out) temporaries for
        # the product and the scaled product, which cost a third of LoRA's overhead on a CPU
        h, b = h.to(y.dtype), b.to(y.dtype)  # no-ops unless the base computes in another dtype (QLoRA)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, self.r), b.T, alpha=self.scaling)
        return out.view(y.shape)  # (B, T, out)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s · B A into base.weight (kept in its dtype); forward then skips the LoRA path."""
        if not self.merged:
            w = self.base.weight
            d = self.delta()
            w.copy_((w.to(d.dtype) + d).to(w.dtype))  # add in full precision, store in the base's dtype
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take s · B A out of base.weight again: the old weight up to rounding (w + d - d is not always w)."""
        if self.merged:
            w = self.base.weight
            d = self.delta()
            w.copy_((w.to(d.dtype) - d).to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        kind = "rslora" if self.use_rslora else "lora"
        return f"{kind} r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={self.merged}"


@dataclass
class LoRAConfig:
    """Which Linear modules get adapters, and their rank, scale and dropout.

    target_modules: a list of module-name suffixes ("q_proj" matches layers.3.attn.q_proj, and so does
    "attn.q_proj"); or one string, a regex that must match a whole module name (re.fullmatch, as in
    PEFT); or "all-linear": every Linear but the output head lm_head.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | tuple[str, ...] | str = ("q_proj", "v_proj")
    use_rslora: bool = False
    bias: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRAConfig.r must be an integer ≥ 1, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.bias != "none":
            raise ValueError(
                f"LoRAConfig.bias={self.bias!r} is not supported; only 'none' (biases stay frozen)"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r


# ------------------------------------------------------------------------------------ applying


def _matches(target: list[str] | tuple[str, ...] | str, name: str) -> bool:
    """PEFT's rule: a string is a regex over the whole name; a list holds names or dotted suffixes."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every plain nn.Linear by module name (the base inside a LoRALinear is not listed)."""
    inside = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rpartition(".")[0] not in inside
    }


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _patterns(names: list[str]) -> str:
    """layers.0.attn.q_proj, layers.1.attn.q_proj, ... → layers.*.attn.q_proj: a readable list."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of model, wrap the Linear modules config selects in LoRALinear (in place).

    Returns the wrapped module names; nothing selected is a ValueError that lists the Linear modules."""
    if lora_layers(model):
        raise ValueError("model already has LoRA layers; remove_lora(model) first")
    linears = _linears(model)
    target = config.target_modules
    if isinstance(target, str) and target.lower() == "all-linear":
        # every projection but the output head: the head is vocab × dim, and PEFT leaves it out too
        chosen = [n for n in linears if n.rpartition(".")[2] != "lm_head"]
    else:
        chosen = [n for n in linears if _matches(target, n)]
    if not chosen:
        raise ValueError(
            f"target_modules={target!r} matches no Linear module; the model's Linear modules are: "
            f"{_patterns(list(linears))} (give suffixes such as 'q_proj', a regex over the whole name, "
            "or 'all-linear')"
        )
    model.requires_grad_(False)
    for name in chosen:
        _set_module(
            model, name, LoRALinear(linears[name], config.r, config.alpha, config.dropout, config.use_rslora)
        )
    return chosen


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that still require gradients (after apply_lora: the A and B matrices)."""
    return [p for p in model.parameters() if p.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters, in our names: {"layers.0.attn.q_proj.lora_A": (r, in), ...lora_B: (out, r)}."""
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[2] in ("lora_A", "lora_B")}


class ParamCount(NamedTuple):
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:  # PEFT's print_trainable_parameters line
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable and total parameter counts (the total includes the adapters, as PEFT's does)."""
    params = list(model.parameters())
    return ParamCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


# ------------------------------------------------------------------------------------ merging


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the frozen base without its adapters inside the block (PEFT's ``disable_adapter``): the
    reference model of DPO or a KL penalty costs no second copy of the weights."""
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("model has no LoRA layers to disable")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place (forward gives the same, one matmul cheaper)."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace each LoRALinear by its plain nn.Linear, in place: with the update merged in (merge=True,
    ready for lmforge.model.export.save_hf) or dropped (merge=False, the base model again)."""
    for name, layer in lora_layers(model).items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _set_module(model, name, layer.base)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy with the adapters merged in and removed; model itself keeps its adapters."""
    return remove_lora(copy.deepcopy(model), merge=True)


# ------------------------------------------------------------------------------------ PEFT format


def hf_module_names(model: nn.Module) -> dict[str, str]:
    """Our module name → the Hugging Face one, for every Linear (wrapped or not) that has one.

    The family's tensor-name table (the one export uses), applied to "<module>.weight": one table, so a
    family added there works here. GPT-2's q/k/v have none (Hugging Face fuses them into c_attn)."""
    table = _inverse(hf_name_table(model.config.family))
    out = {}
    for name in [*_linears(model), *lora_layers(model)]:
        for pat, template in table:
            m = pat.match(name + ".weight")
            if m:
                out[name] = m.expand(template).removesuffix(".weight")
                break
    return out


def _hf_targets(wrapped: list[str], hf_linears: list[str]) -> list[str] | str:
    """target_modules for adapter_config.json: the wrapped modules' last names (["q_proj", "v_proj"])
    when PEFT's suffix rule picks exactly those, else a regex of their full names (one layer only, ...)."""
    leaves = sorted({n.rpartition(".")[2] for n in wrapped})
    if {n for n in hf_linears if _matches(leaves, n)} == set(wrapped):
        return leaves
    return "|".join(re.escape(n) for n in sorted(wrapped))


def save_peft(
    model: nn.Module,
    config: LoRAConfig,
    folder: str | os.PathLike,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write the adapters as a PEFT folder: adapter_config.json + adapter_model.safetensors."""
    folder = Path(folder)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save; apply_lora(model, config) first")
    family = model.config.family
    names = hf_module_names(model)
    tensors = {}
    for name, layer in layers.items():
        if name not in names:
            raise ValueError(
                f"{name} has no Hugging Face module in a {family} model; its adapter cannot be saved"
            )
        if (layer.r, layer.alpha, layer.use_rslora) != (config.r, config.alpha, config.use_rslora):
            raise ValueError(
                f"{name} has r={layer.r}, alpha={layer.alpha}, use_rslora={layer.use_rslora}, but the config "
                f"says r={config.r}, alpha={config.alpha}, use_rslora={config.use_rslora}"
            )
        key = HF_PREFIX + names[name]
        tensors[key + ".lora_A.weight"] = layer.lora_A.detach().contiguous()  # (r, in)
        tensors[key + ".lora_B.weight"] = layer.lora_B.detach().contiguous()  # (out, r)
    wrapped = [names[n] for n in layers]
    adapter = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _hf_targets(wrapped, list(names.values())),
        "use_rslora": config.use_rslora,
        "bias": "none",
        "base_model_name_or_path": base_model_name_or_path,
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D stores (in, out); A and B are the same
        "inference_mode": True,
        "modules_to_save": None,
        "init_lora_weights": True,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    _atomic_save_file(tensors, folder / WEIGHTS_FILE, {"format": "pt"})
    atomic_write_text(folder / CONFIG_FILE, json.dumps(adapter, indent=2))
    return folder


# PEFT features that change what the adapter computes; we refuse them rather than load something else
_UNSUPPORTED = ("use_dora", "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern",
                "lora_bias", "target_parameters", "trainable_token_indices")  # fmt: skip
_KEY = re.compile(re.escape(HF_PREFIX) + r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight")


def read_peft_config(folder: str | os.PathLike) -> tuple[LoRAConfig, dict]:
    """adapter_config.json → (LoRAConfig with target_modules in Hugging Face names, the raw dict)."""
    path = Path(folder) / CONFIG_FILE
    raw = read_json(path)  # FileNotFoundError / ValueError naming the file
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {raw.get('peft_type')!r}; only 'LORA' adapters load here")
    for field in ("r", "lora_alpha", "target_modules"):
        if raw.get(field) is None:
            raise ValueError(f"{path}: missing field {field!r}")
    for field in _UNSUPPORTED:
        if raw.get(field):
            raise ValueError(f"{path}: {field}={raw[field]!r} is not supported")
    if raw.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={raw['bias']!r} is not supported; only 'none'")
    target = raw["target_modules"]
    cfg = LoRAConfig(
        r=int(raw["r"]),
        alpha=raw["lora_alpha"],
        dropout=float(raw.get("lora_dropout") or 0.0),
        target_modules=target if isinstance(target, str) else list(target),
        use_rslora=bool(raw.get("use_rslora", False)),
    )
    return cfg, raw


def load_peft(model: nn.Module, folder: str | os.PathLike) -> LoRAConfig:
    """Apply a PEFT LoRA folder (ours or PEFT's) to model in place: wrap the modules its config targets
    and load A and B. Returns the config, its target_modules as our module names (save_peft takes it)."""
    folder = Path(folder)
    cfg, raw = read_peft_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        extra = (
            " (adapter_model.bin is a pickle; we do not unpickle)"
            if (folder / "adapter_model.bin").exists()
            else ""
        )
        raise FileNotFoundError(f"adapter weights not found: {weights}{extra}")
    try:
        tensors = load_file(str(weights))
    except SafetensorError as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from None
    to_hf = hf_module_names(model)
    to_ours = {h: n for n, h in to_hf.items()}
    # which modules: PEFT's matching rules, run over the Hugging Face names of our Linear modules
    target, exclude = cfg.target_modules, raw.get("exclude_modules")
    if isinstance(target, str) and target.lower() == "all-linear":
        chosen = [h for h in to_ours if h.rpartition(".")[2] != "lm_head"]
    else:
        chosen = [h for h in to_ours if _matches(target, h)]
    if exclude:
        chosen = [h for h in chosen if not _matches(exclude, h)]
    if not chosen:
        raise ValueError(
            f"{folder / CONFIG_FILE}: target_modules={target!r} matches no module of this "
            f"{model.config.family} model; its modules are: {_patterns(list(to_ours))}"
        )
    ours = [to_ours[h] for h in chosen]
    apply_lora(model, LoRAConfig(cfg.r, cfg.alpha, cfg.dropout, ours, cfg.use_rslora))
    layers = lora_layers(model)
    loaded = set()
    with torch.no_grad():
        for key, t in tensors.items():
            m = _KEY.fullmatch(key)
            name = to_ours.get(m["module"]) if m else None
            if name not in layers:
                raise ValueError(
                    f"{weights}: tensor {key!r} matches no LoRA module of this model (targets: "
                    f"{_patterns(chosen)})"
                )
            p = layers[name].lora_A if m["ab"] == "A" else layers[name].lora_B
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"{weights}: tensor {key!r} has shape {tuple(t.shape)}, the model needs {tuple(p.shape)} "
                    f"(r={cfg.r} from {CONFIG_FILE})"
                )
            p.copy_(t)
            loaded.add(name)
    # PEFT leaves a targeted module without tensors at its init (B = 0: no change); so do we, but a file
    # with no tensor at all for the targets is surely the wrong file
    if not loaded:
        raise ValueError(f"{weights}: no LoRA tensors for the targeted modules {_patterns(chosen)}")
    cfg.target_modules = ours
    return cfg
