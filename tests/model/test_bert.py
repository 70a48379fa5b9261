"""BERT: our BertEncoder (the shared Block in post-norm) against transformers and sentence-transformers."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.bert import BertEncoder, config_from_hf_bert, load_bert_folder, pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

SENTENCES_EXTRA = [
    "",  # [CLS] [SEP] only
    "Café naïve — déjà vu in 東京, and an emoji 🙂.",
    "[CLS] special tokens typed in the text [MASK] map straight to their ids",
]


def corpus_sentences(data: Path) -> list[str]:
    """~130 real texts: Wikipedia sentences, Shakespeare speeches, and whole C4 documents (long ones
    exercise truncation at max_seq_length)."""
    wiki = (data / "text" / "wiki_demo.txt").read_text(encoding="utf-8")[:200_000]
    # The demo file joins articles without a space ("socialism.Humans"), so split on the capital too.
    wiki_sents = [s.strip() for s in re.split(r"(?<=[.!?])\s*(?=[A-Z])", wiki) if len(s.strip()) > 20]
    shakespeare = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    speeches = [" ".join(p.splitlines()[1:]) for p in shakespeare.split("\n\n")[:400]]
    speeches = [s for s in speeches if len(s) > 30]
    with open(data / "text" / "c4_demo.jsonl", encoding="utf-8") as f:
        c4 = [json.loads(line)["text"] for _, line in zip(range(30), f)]
    return wiki_sents[::7][:50] + speeches[::3][:50] + c4 + SENTENCES_EXTRA


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> BertEncoder:
    return load_bert_folder(minilm_dir)


@pytest.fixture(scope="module")
def hf_minilm(minilm_dir: Path):
    return transformers.AutoModel.from_pretrained(str(minilm_dir), dtype=torch.float32).eval()


def test_minilm_hidden_states_match_transformers(minilm, hf_minilm, data):
    corpus = corpus_sentences(data)
    texts = corpus[:16] + corpus[100:104]  # Wikipedia sentences and C4 documents: real padding
    enc = minilm.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    assert enc["attention_mask"].eq(0).any(), "the batch should be padded"
    with torch.no_grad():
        ours = minilm(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])  # (B, T, D)
        ref = hf_minilm(**enc).last_hidden_state
    real = enc["attention_mask"].bool()
    diff = (ours - ref)[real].abs().max().item()
    assert diff <= 1e-4, diff
    # No mask at all (a single unpadded text) takes the mask-free SDPA path: same answer.
    one = minilm.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        assert (minilm(one["input_ids"]) - hf_minilm(**one).last_hidden_state).abs().max() <= 1e-4


def reference_embeddings(minilm_dir: Path, texts: list[str]) -> torch.Tensor:
    """sentence-transformers when installed; otherwise what it computes for this model, spelled out:
    transformers' tokenizer and model, mean pooling over the attention mask, L2 normalization."""
    if importlib.util.find_spec("sentence_transformers") is not None:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(minilm_dir), device="cpu")
        return st.encode(texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    model = transformers.AutoModel.from_pretrained(str(minilm_dir), dtype=torch.float32).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def test_minilm_sentence_embeddings_match_reference(minilm, minilm_dir, data):
    texts = corpus_sentences(data)
    assert len(texts) >= 100
    assert minilm.pooling == "mean" and minilm.max_seq_length == 256
    ours = minilm.encode(texts, batch_size=32)  # (N, D)
    ref = reference_embeddings(minilm_dir, texts)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    cos = F.cosine_similarity(ours, ref.float(), dim=-1)
    worst = int(cos.argmin())
    assert cos.min().item() >= 0.9999, (cos.min().item(), texts[worst][:80])
    # Batching and the longest-first reordering do not change the result.
    assert torch.allclose(minilm.encode(texts[:5], batch_size=2), ours[:5], atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def tiny_bert_folder(tmp_path: Path, head: bool = False) -> tuple[Path, torch.nn.Module]:
    """A small random BERT saved as Hugging Face does; weights and norms perturbed so nothing is trivial."""
    cfg = transformers.BertConfig(
        vocab_size=101,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=80,
        max_position_embeddings=40,
        type_vocab_size=2,
        initializer_range=0.2,
        layer_norm_eps=1e-12,
    )
    torch.manual_seed(0)
    cls = transformers.BertForMaskedLM if head else transformers.BertModel
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)  # init leaves them at 1 / 0
    model.save_pretrained(tmp_path)
    return tmp_path, (model.bert if head else model)


@pytest.mark.parametrize("head", [False, True], ids=["BertModel", "BertForMaskedLM"])
def test_tiny_random_bert_matches(tmp_path, head):
    folder, hf = tiny_bert_folder(tmp_path, head)
    ours = load_bert_folder(folder)
    assert ours.tokenizer is None and ours.max_seq_length == 40
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (4, 23), generator=g)
    types = torch.randint(0, 2, (4, 23), generator=g)
    mask = torch.ones(4, 23, dtype=torch.long)
    for row, n in enumerate([23, 17, 5, 1]):
        mask[row, n:] = 0
    with torch.no_grad():
        a = ours(ids, mask, types)
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert b.std() > 0.5  # a random model that does something
    assert (a - b)[mask.bool()].abs().max().item() <= 1e-4
    m = mask.bool()
    ref = (b * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert torch.allclose(pool(a, mask, "mean"), ref, atol=1e-4)


def _rewrite(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f))


def test_bad_bert_folders(tmp_path):
    folder, _ = tiny_bert_folder(tmp_path)
    _rewrite(folder, lambda t: t.pop("encoder.layer.1.intermediate.dense.weight"))
    with pytest.raises(ValueError, match=r"missing tensors.*layers\.1\.ffn\.up_proj\.weight"):
        load_bert_folder(folder)

    folder, _ = tiny_bert_folder(tmp_path / "shape")
    _rewrite(folder, lambda t: t.update({"encoder.layer.0.attention.self.key.weight": torch.zeros(48, 47)}))
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.k_proj\.weight.*shape \(48, 47\)"):
        load_bert_folder(folder)

    folder, _ = tiny_bert_folder(tmp_path / "unknown")
    _rewrite(folder, lambda t: t.update({"encoder.layer.0.adapter.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"model\.safetensors.*unknown tensor 'encoder\.layer\.0\.adapter"):
        load_bert_folder(folder)

    raw = json.loads((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="model_type 'llama' is not 'bert'"):
        config_from_hf_bert({**raw, "model_type": "llama"})
    with pytest.raises(ValueError, match="relative_key"):
        config_from_hf_bert({**raw, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="missing field 'hidden_size'"):
        config_from_hf_bert({k: v for k, v in raw.items() if k != "hidden_size"})

    model = BertEncoder(config_from_hf_bert(raw))
    with pytest.raises(ValueError, match="longer than the model's 40 positions"):
        model(torch.zeros(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode(["hello"])
    with pytest.raises(TypeError, match="list of texts"):
        model.encode("hello")


def test_mlm_head_matches_transformers(tmp_path):
    """BertForMaskedLM: the masked-LM scores, with padding and two segments."""
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=80, max_position_embeddings=64)  # fmt: skip
    hf = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path)
    from lmforge.model.bert import load_bert_folder

    ours = load_bert_folder(tmp_path)
    ids = torch.randint(0, 120, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours.mlm_logits(ids, mask, types)
    assert (got - want)[mask.bool()].abs().max().item() < 1e-4
