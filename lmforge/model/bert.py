"""BERT: the encoder-only transformer, and sentence embeddings from it (all-MiniLM-L6-v2).

BERT (Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding") is the original Transformer's encoder alone. It differs from our decoders in what it
is for, not in its parts — which is why it reuses `Block` and `Attention` rather than having its own:

  - Bidirectional attention. A decoder's causal mask lets token i see tokens ≤ i, so it can predict
    the next one; an encoder's mask hides only padding, so every token sees the whole text, left and
    right. Nothing is generated, so there is no KV cache and no sampling.
  - Masked language modelling (MLM). Seeing both sides, the model cannot be trained to predict the
    next token (it would see it); instead ~15% of the input tokens are hidden ([MASK]) and predicted
    from the rest. The output is one contextual vector per token, not a next-token distribution.
  - [CLS] ... [SEP]. Every input starts with [CLS], whose final vector the original paper used as a
    summary of the sequence (next-sentence prediction, classification), and segments end in [SEP];
    token type ids (0 / 1) say which of two segments a token belongs to, as a third embedding.
  - Post-norm. Each sub-layer is `norm(h + f(h))` (the 2017 Transformer's placement), where modern
    decoders use pre-norm `h + f(norm(h))`; and the embeddings are layer-normalized, with no norm after
    the last block.

    h = LayerNorm(word[ids] + position[0..T) + type[token_type_ids])         (B, T, D)
    for each block: h = LN(h + attn(h, padding mask)); h = LN(h + ffn(h))    GELU feed-forward, biases

Sentence embeddings (Reimers & Gurevych 2019, Sentence-BERT): one vector per text is the mean of its
token vectors (padding excluded), which sentence-transformers found works better than [CLS] for
models fine-tuned to it; the folder's 1_Pooling/config.json says which pooling a model was trained
with. The vectors are then L2-normalized, so the cosine similarity of two texts is a plain dot
product: a search over N documents is one matrix product, and scores lie in [-1, 1].

The weights load from a Hugging Face / sentence-transformers folder (config.json + safetensors); the
names are mapped to ours so that a BertEncoder's state dict looks like a Transformer's.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.fileio import read_json
from lmforge.model.attention import build_mask
from lmforge.model.config import ModelConfig
from lmforge.model.layers import activation
from lmforge.model.transformer import Block
from lmforge.model.weights import _fill, empty_model, hf_config, hf_tensor_files

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


class MLMHead(nn.Module):
    """BERT's masked-language-model head: dense → activation → LayerNorm, then scores over the vocabulary
    with the (tied) word-embedding matrix plus a bias. Pre-training hides 15% of the tokens and asks this
    head to name them; sentence-embedding models drop it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.act = activation(cfg.activation)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h))) @ embedding.T + self.bias  # (B, T, V)


class BertEncoder(nn.Module):
    """An encoder-only transformer: forward(input_ids (B, T)) → hidden states (B, T, D).

    `encode(texts)` turns texts into sentence embeddings (N, D) with `tokenizer`, `pooling` and
    `max_seq_length`, which `load_bert_folder` sets from the model folder.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.position != "learned":
            raise ValueError(f"BertEncoder uses learned positions; config has position={cfg.position!r}")
        if cfg.norm_position != "post":
            # Pre-norm blocks would need a final norm, which BERT does not have.
            raise ValueError(f"BertEncoder uses post-norm blocks; config has {cfg.norm_position!r}")
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.dim)
        n_types = int(cfg.extra.get("type_vocab_size", 2))
        self.type_embed = nn.Embedding(n_types, cfg.dim) if n_types else None
        self.embed_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.mlm_head = MLMHead(cfg) if cfg.extra.get("mlm_head") else None
        self.tokenizer = None  # a WordPieceTokenizer, set by load_bert_folder
        self.pooling = "mean"  # from 1_Pooling/config.json
        self.max_seq_length = cfg.max_seq_len  # sentence_bert_config.json: 256 for all-MiniLM-L6-v2
        self.source_dir: Path | None = None  # the folder it was loaded from

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        b, t = input_ids.shape
        if t > cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's {cfg.max_seq_len} positions")
        positions = torch.arange(t, device=input_ids.device)
        h = self.embed(input_ids) + self.pos_embed(positions)[None]  # (B, T, D)
        if self.type_embed is not None:
            if token_type_ids is None:  # one segment: every token is type 0, as in Hugging Face
                token_type_ids = torch.zeros_like(input_ids)
            h = h + self.type_embed(token_type_ids)
        h = self.embed_norm(h)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: no mask, and SDPA can take its fastest path
        # Bidirectional (cfg.causal is False for BERT): only padded keys are hidden. A padded query
        # still attends to the real tokens; its output is garbage that pooling ignores.
        if attention_mask is not None and not cfg.causal:
            # a key-padding mask (B, 1, 1, T) that broadcasts over queries: T times smaller than the full
            # (B, 1, T, T) one, which SDPA would otherwise read for every head
            hide = attention_mask[:, None, None, :] == 0
            mask = torch.zeros(hide.shape, dtype=h.dtype, device=h.device).masked_fill(
                hide, torch.finfo(h.dtype).min
            )
        else:
            mask = build_mask(attention_mask, t, cfg.causal, None, h.dtype, h.device, b)  # (B, 1, T, T)
        for layer in self.layers:
            h = layer(h, None, mask)  # no RoPE: positions were added to the embeddings
        return h  # (B, T, D); BERT has no final norm (each block already ends in one)

    def mlm_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked-LM scores (B, T, V): what the model thinks each ([MASK]ed) position holds."""
        if self.mlm_head is None:
            raise ValueError(
                "this checkpoint has no MLM head (cls.predictions.* tensors); it is an encoder only"
            )
        return self.mlm_head(self(input_ids, attention_mask, token_type_ids), self.embed.weight)

    def hidden_states(
        self, texts: list[str], text_pair: list[str] | None = None, max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch (pairs become [CLS] a [SEP] b [SEP]) and run it: (hidden (b, T, D), mask (b, T))."""
        if self.tokenizer is None:
            raise ValueError("this BertEncoder has no tokenizer; set model.tokenizer or use load_bert_folder")
        enc = self.tokenizer(
            list(texts),
            text_pair=None if text_pair is None else list(text_pair),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_seq_length,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        return self(ids, mask, enc["token_type_ids"].to(self.device)), mask

    def embed_texts(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Pooled sentence vectors (b, D) of one batch, with gradients (training uses this; encode wraps it)."""
        h, mask = self.hidden_states(texts)  # (b, T, D)
        emb = pool(h, mask, self.pooling)  # (b, D)
        return F.normalize(emb, p=2, dim=-1) if normalize else emb

    @torch.inference_mode()
    def encode(
        self, texts: list[str], batch_size: int = 32, normalize: bool = True, progress: bool = False
    ) -> torch.Tensor:
        """Sentence embeddings (N, D), float32 on the CPU, in the order of `texts`.

        Texts are truncated to `max_seq_length` tokens and batched longest first, so each batch holds texts
        of similar length and little compute goes to padding. sentence-transformers sorts by characters;
        we tokenize everything first and sort by the exact token count, which leaves almost no padding.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text as [text]")
        if self.tokenizer is None:
            raise ValueError("this BertEncoder has no tokenizer; set model.tokenizer or use load_bert_folder")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        out = torch.empty(len(texts), self.config.dim, dtype=torch.float32)  # (N, D)
        if not texts:
            return out
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        rows = enc["input_ids"]
        pad = self.tokenizer.token_to_id(self.tokenizer.pad_token) or 0
        order = sorted(range(len(texts)), key=lambda i: -len(rows[i]))
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encode", unit="batch", total=len(starts))
        for start in starts:
            idx = order[start : start + batch_size]
            width = len(rows[idx[0]])  # the longest of the batch: rows are sorted
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (b, T)
            types = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                types[j, : len(rows[i])] = torch.tensor(enc["token_type_ids"][i])
                mask[j, : len(rows[i])] = 1
            ids, types, mask = ids.to(self.device), types.to(self.device), mask.to(self.device)
            emb = pool(self(ids, mask, types), mask, self.pooling)  # (b, D)
            out[idx] = (F.normalize(emb, p=2, dim=-1) if normalize else emb).float().cpu()
        return out


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Token vectors (B, T, D) → one vector per sequence (B, D), padding excluded; float32.

    mean: average of the real tokens; cls: the first token's vector; max: the per-feature maximum;
    mean_sqrt_len: the sum divided by sqrt(length) (sentence-transformers' definitions).
    """
    h = hidden.float()  # sum in float32 even for a bf16 model
    m = attention_mask[..., None].to(h.dtype)  # (B, T, 1)
    if mode == "cls":
        return h[:, 0]
    if mode == "max":
        return h.masked_fill(m == 0, -1e9).amax(dim=1)
    total = (h * m).sum(dim=1)  # (B, D)
    count = m.sum(dim=1).clamp(min=1e-9)  # (B, 1); clamp: an all-padding row gives 0, not NaN
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len":
        return total / count.sqrt()
    raise ValueError(f"unknown pooling {mode!r}; supported: {', '.join(POOLING_MODES)}")


def config_from_hf_bert(cfg: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face BERT config.json dict."""
    if cfg.get("model_type") != "bert":
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r} is not 'bert'")
    kind = cfg.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"{where}: position_embedding_type {kind!r} is not supported (only 'absolute')")
    act = cfg.get("hidden_act", "gelu")
    act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(act, act)
    if act not in ("gelu", "gelu_tanh", "relu", "silu"):
        raise ValueError(f"{where}: hidden_act {act!r} is not supported")
    try:
        return ModelConfig(
            family="bert",
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            ffn_dim=cfg["intermediate_size"],
            max_seq_len=cfg.get("max_position_embeddings", 512),
            norm="layernorm",
            norm_eps=cfg.get("layer_norm_eps", 1e-12),
            norm_position="post",
            activation=act,
            gated_ffn=False,
            mlp_bias=True,
            attn_bias=True,
            o_bias=True,
            causal=False,
            position="learned",
            tie_embeddings=True,  # unused: an encoder has no output head here
            extra={
                "type_vocab_size": cfg.get("type_vocab_size", 2),
                "pad_token_id": cfg.get("pad_token_id", 0),
            },
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


_LAYER = r"encoder\.layer\.(\d+)\."
_HF_BERT_NAMES = [
    (r"embeddings\.word_embeddings\.weight", "embed.weight"),
    (r"embeddings\.position_embeddings\.weight", "pos_embed.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "type_embed.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embed_norm.\1"),
    (_LAYER + r"attention\.self\.query\.(weight|bias)", r"layers.\1.attn.q_proj.\2"),
    (_LAYER + r"attention\.self\.key\.(weight|bias)", r"layers.\1.attn.k_proj.\2"),
    (_LAYER + r"attention\.self\.value\.(weight|bias)", r"layers.\1.attn.v_proj.\2"),
    (_LAYER + r"attention\.output\.dense\.(weight|bias)", r"layers.\1.attn.o_proj.\2"),
    (_LAYER + r"attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (_LAYER + r"intermediate\.dense\.(weight|bias)", r"layers.\1.ffn.up_proj.\2"),
    (_LAYER + r"output\.dense\.(weight|bias)", r"layers.\1.ffn.down_proj.\2"),
    (_LAYER + r"output\.LayerNorm\.(weight|bias)", r"layers.\1.ffn_norm.\2"),
    (r"cls\.predictions\.transform\.dense\.(weight|bias)", r"mlm_head.dense.\1"),
    (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", r"mlm_head.norm.\1"),
    (r"cls\.predictions\.(?:decoder\.)?bias", "mlm_head.bias"),
]
_HF_BERT_TABLE = _HF_BERT_NAMES  # the raw (pattern, template) pairs: export inverts them
_HF_BERT_NAMES = [(re.compile(p), r) for p, r in _HF_BERT_NAMES]
# Tensors a BERT checkpoint may carry that the encoder does not use:
#   embeddings.position_ids: a cached arange(max_positions) buffer that older transformers saved;
#   pooler.*: the dense + tanh on [CLS] trained for next-sentence prediction (sentence-transformers'
#             pooling does not use it);
#   cls.seq_relationship.*: the next-sentence-prediction head of BertForPreTraining;
#   cls.predictions.decoder.weight: the MLM head's output matrix, a copy of the word embeddings (tied).
#   classifier.*: a BertForSequenceClassification head (a cross-encoder reads it with the pooler).
_IGNORED = re.compile(
    r"embeddings\.position_ids|pooler\..*|classifier\..*|cls\.seq_relationship\..*"
    r"|cls\.predictions\.decoder\.weight"
)


def bert_name_to_ours(name: str) -> str | None:
    """A Hugging Face BERT tensor name → ours; "" for tensors to skip, None for unknown names."""
    if name.startswith("bert."):  # BertFor* checkpoints keep the encoder under bert.
        name = name[len("bert.") :]
    # Checkpoints converted from Google's TensorFlow release name LayerNorm's scale and shift gamma/beta.
    name = re.sub(
        r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    )
    if _IGNORED.fullmatch(name):
        return ""
    for pattern, ours in _HF_BERT_NAMES:
        if pattern.fullmatch(name):
            return pattern.sub(ours, name)
    return None


def _read_pooling(path: Path) -> str:
    """The pooling a sentence-transformers folder was trained with ("mean" when it says nothing)."""
    folder = path / "1_Pooling"
    modules = path / "modules.json"
    if modules.is_file():
        for m in read_json(modules):  # the pipeline: Transformer, Pooling, Normalize, ...
            if str(m.get("type", "")).endswith("Pooling"):
                folder = path / m.get("path", "1_Pooling")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return "mean"
    cfg = read_json(cfg_path)
    mode = cfg.get("pooling_mode")  # newer sentence-transformers: a name (or a list of names)
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else None
    if mode is None:  # the classic format: one boolean per mode
        flags = {
            "cls": "pooling_mode_cls_token",
            "mean": "pooling_mode_mean_tokens",
            "max": "pooling_mode_max_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
        }
        on = [m for m, key in flags.items() if cfg.get(key)]
        others = [
            k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in flags.values()
        ]
        if len(on) != 1 or others:
            raise ValueError(f"{cfg_path}: expected exactly one of {', '.join(flags.values())} to be true")
        mode = on[0]
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
    if mode not in POOLING_MODES:
        raise ValueError(
            f"{cfg_path}: pooling {mode!r} is not supported; supported: {', '.join(POOLING_MODES)}"
        )
    return mode


def load_bert_folder(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> BertEncoder:
    """A BERT folder (config.json + *.safetensors, optionally a tokenizer and sentence-transformers files)."""
    path = Path(path)
    cfg = config_from_hf_bert(hf_config(path), str(path / "config.json"))
    tensors: dict[str, torch.Tensor] = {}
    for f, hf in hf_tensor_files(path):
        for name, t in hf.items():
            ours = bert_name_to_ours(name)
            if ours is None:
                raise ValueError(f"{f}: unknown tensor {name!r} for a BERT model")
            if ours:
                tensors[ours] = t
    cfg.extra["mlm_head"] = any(k.startswith("mlm_head.") for k in tensors)
    with empty_model():  # no memory or random init for weights _fill replaces at once
        model = BertEncoder(cfg)
    model = _fill(model, tensors, str(path), dtype)  # _fill only needs .config and the state dict
    if (path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file():
        from lmforge.tokenizer.wordpiece import load_wordpiece

        model.tokenizer = load_wordpiece(path)
    model.pooling = _read_pooling(path)
    model.source_dir = path  # save_bert_folder copies its tokenizer and sentence-transformers files
    st_cfg = path / "sentence_bert_config.json"
    st_max = read_json(st_cfg).get("max_seq_length") if st_cfg.is_file() else None
    if st_max:
        model.max_seq_length = int(st_max)
    else:  # as sentence-transformers: the smaller of the model's positions and the tokenizer's limit
        limit = getattr(model.tokenizer, "model_max_length", None) or math.inf
        model.max_seq_length = int(min(cfg.max_seq_len, limit))
    if model.max_seq_length > cfg.max_seq_len:
        raise ValueError(
            f"{st_cfg}: max_seq_length {model.max_seq_length} exceeds the model's {cfg.max_seq_len} positions"
        )
    return model.eval()


# Files of a sentence-transformers folder that describe the pipeline, not the weights.
_COPIED = (
    "config.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling",
)


def bert_state_to_hf(model: BertEncoder, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our BERT state dict in Hugging Face names (``prefix="bert."`` for a BertFor* checkpoint)."""
    from lmforge.model.export import _inverse

    table = _inverse(_HF_BERT_TABLE)
    out = {}
    for name, t in model.state_dict().items():
        for pat, template in table:
            m = pat.match(name)
            if m:
                out[prefix + m.expand(template)] = t.detach().contiguous()
                break
        else:
            raise ValueError(f"parameter {name!r} has no Hugging Face BERT name")
    if "mlm_head.bias" in model.state_dict():
        out[prefix.replace("bert.", "") + "cls.predictions.decoder.weight"] = out[
            prefix + "embeddings.word_embeddings.weight"
        ]
    return out


def save_bert_folder(
    model: BertEncoder,
    folder: str | os.PathLike,
    extra: dict[str, torch.Tensor] | None = None,
    config: dict[str, Any] | None = None,
    prefix: str = "",
) -> Path:
    """Write a fine-tuned encoder as a Hugging Face / sentence-transformers folder (loads in both).

    The tokenizer and pipeline files are copied from the folder the model was loaded from; ``extra``
    tensors (a classifier head) and ``config`` fields are added to model.safetensors and config.json."""
    import json
    import shutil

    from lmforge.fileio import atomic_write_text
    from lmforge.model.export import _atomic_save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = getattr(model, "source_dir", None)
    if src is not None:
        for name in _COPIED:
            f = Path(src) / name
            if f.is_dir():
                shutil.copytree(f, folder / name, dirs_exist_ok=True)
            elif f.is_file() and f.resolve() != (folder / name).resolve():
                shutil.copyfile(f, folder / name)
    cfg_file = folder / "config.json"
    hf_cfg = read_json(cfg_file) if cfg_file.is_file() else {"model_type": "bert"}
    atomic_write_text(cfg_file, json.dumps({**hf_cfg, **(config or {})}, indent=2))
    tensors = {
        **bert_state_to_hf(model, prefix),
        **{k: v.detach().contiguous() for k, v in (extra or {}).items()},
    }
    _atomic_save_file(tensors, folder / "model.safetensors", {"format": "pt"})
    return folder


__all__ = [
    "BertEncoder",
    "bert_name_to_ours",
    "bert_state_to_hf",
    "config_from_hf_bert",
    "load_bert_folder",
    "pool",
    "save_bert_folder",
]
