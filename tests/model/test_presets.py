"""Presets build the published shapes."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.presets import PRESETS, preset
from lmforge.model.stats import count
from lmforge.model.transformer import Transformer


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):
        model = Transformer(preset("gpt2"))
    assert count(model).params == 124_439_808  # the number every GPT-2 reproduction reports


def test_smollm2_and_gemma_presets_match_the_real_files(smollm2_gguf, gemma_gguf):
    from lmforge.model.families import config_from_gguf
    from lmforge.tokenizer.gguf_metadata import read_gguf_metadata

    for name, path in (("smollm2-135m", smollm2_gguf), ("gemma3-270m", gemma_gguf)):
        real = config_from_gguf(read_gguf_metadata(path), str(path))
        ours = PRESETS[name]
        for field in (
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "ffn_dim",
            "vocab_size",
            "rope_theta",
        ):
            assert getattr(ours, field) == getattr(real, field), (name, field)
        assert ours.layer_types == real.layer_types


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_small_versions_run(name):
    cfg = preset(name, n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab_size=100)
    logits = Transformer(cfg)(torch.randint(0, 100, (2, 12)))
    assert logits.shape == (2, 12, 100) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt5")
