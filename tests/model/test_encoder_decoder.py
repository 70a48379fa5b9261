"""T5 encoder–decoder: our EncoderDecoder against transformers' T5ForConditionalGeneration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.model.encoder_decoder import (
    EncoderDecoder,
    config_from_hf_t5,
    load_t5_folder,
    relative_position_bucket,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 200


def tiny_t5(ff: str, tied: bool, seed: int = 0):
    """A random 2-encoder / 3-decoder-layer T5, weights re-drawn with std 0.2 so nothing is near-trivial."""
    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=96,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=ff,
        tie_word_embeddings=tied,
        dropout_rate=0.0,
    )
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
        if not tied:
            # transformers 5 always ties lm_head at init; a checkpoint with its own head (v1.1, Flan-T5)
            # is one whose lm_head.weight differs, so give it one.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64) * 0.2)
    return model


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, :4] = 0  # left padding: relative positions make either work
    dec = torch.randint(2, VOCAB, (3, 6), generator=g)
    dec[:, 0] = 0  # decoder_start_token_id
    dec_mask = torch.ones_like(dec)
    dec_mask[2, 4:] = 0
    return ids, mask, dec, dec_mask


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(tmp_path: Path, ff: str, tied: bool) -> None:
    hf = tiny_t5(ff, tied)
    hf.save_pretrained(tmp_path)
    ours = load_t5_folder(tmp_path)
    assert ours.config.tie_embeddings is tied
    assert (
        ours.config.extra["scale_decoder_outputs"] is tied
    )  # the transformers 5 rule, see config_from_hf_t5
    assert (ours.lm_head is None) is tied
    ids, mask, dec, dec_mask = inputs()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        enc_want = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, dec, attention_mask=mask, decoder_attention_mask=dec_mask)
        enc_got = ours.encode(ids, mask)
        no_masks = ours(ids, dec)
        no_masks_want = hf(input_ids=ids, decoder_input_ids=dec).logits
    assert got.shape == (3, 6, VOCAB) and enc_got.shape == (3, 11, 64)
    assert want.logits.std() > 0.1  # not trivial
    torch.testing.assert_close(enc_got, enc_want, atol=1e-4, rtol=0)
    torch.testing.assert_close(got, want.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(no_masks, no_masks_want, atol=1e-4, rtol=0)
    # the padding matters: the answer changes without the encoder mask
    assert (no_masks[1] - got[1]).abs().max() > 1e-3


def test_legacy_config_and_duplicate_embeddings(tmp_path: Path) -> None:
    """A transformers-4 style folder (tie_word_embeddings false, no scale_decoder_outputs, the stacks'
    embed_tokens copies and the unused cross-attention bias saved) loads to the same model."""
    hf = tiny_t5("gated-gelu", tied=False, seed=3)
    sd = {k: v.contiguous().clone() for k, v in hf.state_dict().items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()
    sd["decoder.embed_tokens.weight"] = sd["shared.weight"].clone()
    sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    save_file(sd, str(tmp_path / "model.safetensors"))
    raw = hf.config.to_dict()
    raw.pop("scale_decoder_outputs", None)
    raw["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(raw))
    ours = load_t5_folder(tmp_path)
    assert not ours.config.tie_embeddings and not ours.config.extra["scale_decoder_outputs"]
    ids, mask, dec, _ = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, dec, mask),
            hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            atol=1e-4,
            rtol=0,
        )


def test_bucket_function_matches_transformers() -> None:
    bucket_hf = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    q = torch.arange(0, 300)[:, None]
    k = torch.arange(0, 300)[None, :]
    rel = k - q  # offsets -299..299
    for num_buckets, max_distance in [(8, 20), (32, 128), (16, 50), (6, 7)]:
        for bidirectional in (True, False):
            got = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
            want = bucket_hf(
                rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
            )
            assert torch.equal(got, want), (num_buckets, max_distance, bidirectional)
            assert 0 <= int(got.min()) and int(got.max()) < num_buckets


def test_config_rules() -> None:
    base = {
        "model_type": "t5",
        "vocab_size": 100,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
    }
    c = config_from_hf_t5(base)
    assert c.activation == "relu" and not c.gated_ffn and c.attn_scale == 1.0
    assert c.extra["n_decoder_layers"] == 2 and c.extra["scale_decoder_outputs"] is True
    c = config_from_hf_t5({**base, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False})
    assert c.activation == "gelu_tanh" and c.gated_ffn and c.extra["scale_decoder_outputs"] is False
    c = config_from_hf_t5({**base, "tie_word_embeddings": True, "scale_decoder_outputs": False})
    assert c.extra["scale_decoder_outputs"] is False
    with pytest.raises(ValueError, match="feed_forward_proj"):
        config_from_hf_t5({**base, "feed_forward_proj": "relu-gated"})
    with pytest.raises(ValueError, match="model_type 'bart'"):
        config_from_hf_t5({**base, "model_type": "bart"})
    with pytest.raises(ValueError, match="missing field 'd_model'"):
        config_from_hf_t5({k: v for k, v in base.items() if k != "d_model"})


def test_bad_inputs(tmp_path: Path) -> None:
    hf = tiny_t5("relu", tied=True, seed=4)
    hf.save_pretrained(tmp_path)
    st = tmp_path / "model.safetensors"
    good = load_file(str(st))
    missing = dict(good)
    del missing["decoder.block.2.layer.1.EncDecAttention.k.weight"]
    save_file(missing, str(st))
    with pytest.raises(
        ValueError, match=r"missing tensor 'decoder\.block\.2\.layer\.1\.EncDecAttention\.k\.weight'"
    ):
        load_t5_folder(tmp_path)
    bad_shape = dict(good)
    bad_shape["encoder.block.1.layer.1.DenseReluDense.wi.weight"] = torch.zeros(95, 64)
    save_file(bad_shape, str(st))
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wi\.weight' has shape \(95, 64\), expected \(96, 64\)",
    ):
        load_t5_folder(tmp_path)
    save_file({**good, "encoder.block.0.layer.0.SelfAttention.qq.weight": torch.zeros(1)}, str(st))
    with pytest.raises(ValueError, match="unknown tensor 'encoder.block.0.layer.0.SelfAttention.qq.weight'"):
        load_t5_folder(tmp_path)
    gated = {k.replace("DenseReluDense.wi.", "DenseReluDense.wi_1."): v for k, v in good.items()}
    save_file(gated, str(st))  # gated FFN weights under a relu config
    with pytest.raises(ValueError, match=r"unknown tensor '.*DenseReluDense\.wi_1\.weight' .*'relu'"):
        load_t5_folder(tmp_path)
    st.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="never loaded"):
        load_t5_folder(tmp_path)


def test_random_init_shapes() -> None:
    cfg = config_from_hf_t5(
        {
            "model_type": "t5",
            "vocab_size": 50,
            "d_model": 32,
            "d_kv": 4,
            "d_ff": 48,
            "num_layers": 1,
            "num_decoder_layers": 2,
            "num_heads": 2,
            "feed_forward_proj": "gated-gelu",
        }  # fmt: skip
    )
    model = EncoderDecoder(cfg)
    assert len(model.encoder.layers) == 1 and len(model.decoder.layers) == 2
    assert model.decoder.layers[0].attn.o_proj.in_features == 8  # n_heads · d_kv, not d_model
    logits = model(torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (2, 3)))
    assert logits.shape == (2, 3, 50) and torch.isfinite(logits).all()
