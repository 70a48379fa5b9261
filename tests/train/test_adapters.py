"""Bottleneck adapters and layer freezing on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.layers import MoE
from lmforge.model.transformer import Transformer
from lmforge.train.adapters import Adapter, add_adapters, freeze_layers
from lmforge.train.losses import cross_entropy

V = 128
TINY = ModelConfig(dim=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=V, ffn_dim=128, family="llama")


def make(cfg: ModelConfig = TINY) -> Transformer:
    torch.manual_seed(0)
    return Transformer(cfg).init_weights(std=0.1).eval()


def batch(b: int = 4, t: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(1))


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(model, steps: int = 15, lr: float = 1e-2) -> list[float]:
    x = batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_adapter_layer():
    a = Adapter(64, 16)
    z = torch.randn(2, 3, 64)
    assert torch.equal(a(z), z)  # up = 0: the identity
    # 2·D·b + b + D: down (16 × 64 + 16) and up (64 × 16 + 64)
    assert sum(p.numel() for p in a.parameters()) == 2 * 64 * 16 + 16 + 64 == 2128
    with torch.no_grad():
        a.up.weight.fill_(0.1)
    h = torch.relu(z @ a.down.weight.T + a.down.bias)
    torch.testing.assert_close(a(z), z + h @ a.up.weight.T + a.up.bias)
    assert a(z.bfloat16()).dtype == torch.bfloat16  # float32 adapter in a bf16 model


@pytest.mark.parametrize("where, count", [(("ffn",), 2 * 2128), (("attn", "ffn"), 4 * 2128)])
def test_adapters_start_as_the_identity_and_only_they_train(where, count):
    model = make()
    x = batch()
    ref = model(x)
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    names = add_adapters(model, bottleneck=16, where=where)
    assert names == [f"layers.{i}.{s}.adapter" for i in range(2) for s in where]
    assert torch.equal(model(x), ref)  # exactly the base model at step 0
    assert n_trainable(model) == count  # hand count: 2128 per adapter (test_adapter_layer)
    assert all(".adapter." in n for n, p in model.named_parameters() if p.requires_grad)
    assert model.layers[0].attn.sliding is False  # the sublayers keep their attributes and names
    assert "layers.0.ffn.up_proj.weight" in dict(model.named_parameters())
    losses = train(model)
    assert losses[-1] < losses[0] - 0.05, losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n])
    assert not torch.equal(model(x), ref)


def test_houlsby_trains_the_norms_too():
    model = make()
    add_adapters(model, bottleneck=8, where=("attn", "ffn"), train_norms=True)
    per_adapter = 2 * 64 * 8 + 8 + 64
    norms = (2 * 2 + 1) * 64  # two per block + the final norm
    assert n_trainable(model) == 4 * per_adapter + norms


def test_adapters_on_gemma_and_moe():
    gemma = ModelConfig(family="gemma3_text", vocab_size=V, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                        ffn_dim=128, norm_offset=1.0, norm_position="sandwich", qk_norm=True, activation="gelu_tanh",
                        sliding_window=4, rope_local_theta=1e4, layer_types=["sliding", "full"], embed_scale=8.0)  # fmt: skip
    moe = ModelConfig(dim=64, n_heads=4, n_layers=2, vocab_size=V, ffn_dim=64, n_experts=4, family="mixtral")
    x = batch()
    for cfg in (gemma, moe):
        model = make(cfg)
        ref = model(x)
        add_adapters(model, bottleneck=8, where=("attn", "ffn"))
        assert torch.equal(model(x), ref)
    assert isinstance(model.layers[0].ffn, MoE) and model.aux_loss() is not None  # still an MoE


def test_deepcopy_gets_its_own_adapters():
    model = make()
    add_adapters(model, bottleneck=8)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.layers[0].ffn.adapter.up.weight.fill_(0.5)
    x = batch()
    assert not torch.equal(twin(x), model(x))  # the copy's hook calls the copy's adapter


def test_add_adapters_errors():
    model = make()
    with pytest.raises(ValueError, match="give one or both"):
        add_adapters(model, where=("mlp",))
    add_adapters(model)
    with pytest.raises(ValueError, match="has an adapter already"):
        add_adapters(model)


def test_freeze_all_but_the_last_block():
    model = make()
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    names = freeze_layers(model, train_last=1)
    assert names and all(n.startswith(("layers.1.", "norm.")) for n in names)
    block = sum(p.numel() for p in model.layers[1].parameters())
    # one block by hand: q, o 64×64; k, v 64×32; gate, up 64×128; down 128×64; two norms of 64
    assert block == 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64 == 36992
    assert n_trainable(model) == block + 64
    assert freeze_layers(model, train_last=1, train_norm=False)[-1] != "norm.weight"
    freeze_layers(model, train_last=1)
    losses = train(model, steps=10, lr=3e-3)
    assert losses[-1] < losses[0], losses
    for n, p in model.named_parameters():
        if not n.startswith(("layers.1.", "norm.")):
            assert p.grad is None and torch.equal(p, frozen[n])


def test_freeze_by_pattern():
    model = make()
    names = freeze_layers(model, patterns=[r"layers\.\d+\.ffn", "norm"])
    assert set(names) == {
        f"layers.{i}.ffn.{m}_proj.weight" for i in range(2) for m in ("gate", "up", "down")
    } | {"norm.weight"}
    assert freeze_layers(model, train_last=0) == ["norm.weight"]
    with pytest.raises(ValueError, match=r"matches no module; the modules are: embed, layers, layers\.\*"):
        freeze_layers(model, patterns="lm_head")  # tied: there is no lm_head
    with pytest.raises(ValueError, match="the model has 2 blocks"):
        freeze_layers(model, train_last=3)
    with pytest.raises(ValueError, match="give train_last"):
        freeze_layers(model)
