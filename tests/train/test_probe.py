"""Linear probes: the logistic fit against its optimality condition, honest cross-validation, group folds,
last-token features, and a reward head fitted on frozen features."""

import numpy as np
import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.pairs import TokenizedPair
from lmforge.train.probe import cross_val_scores, fit_logistic, group_folds, last_token_features
from lmforge.train.reward import RewardModel, fit_reward_head
from lmforge.train.sft import SFTExample


def test_fit_logistic_satisfies_the_optimality_condition():
    # At the optimum of mean BCE + l2/2 |w_std|², the gradient is zero: mean((p − y) z) + l2 w_std = 0 and
    # mean(p − y) = 0, where z are the standardised features. Checked on raw-feature outputs.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0, 100.0]) + 4.0
    y = (x[:, 0] + 0.1 * x[:, 1] - 20 * x[:, 2] + torch.randn(300, generator=g) > 5).float()
    w, b = fit_logistic(x, y, l2=0.1)
    p = torch.sigmoid(x.double() @ w.double() + b)
    mu, sd = x.double().mean(0), x.double().std(0)
    z = (x.double() - mu) / sd
    w_std = w.double() * sd
    assert abs(float((p - y).mean())) < 1e-4
    assert torch.allclose(((p - y)[:, None] * z).mean(0) + 0.1 * w_std, torch.zeros(5, dtype=torch.double),
                          atol=1e-4)  # fmt: skip
    assert float(((p > 0.5).float() == y).float().mean()) > 0.8


def test_fit_logistic_without_bias_and_bad_shapes():
    x = torch.randn(50, 3)
    w, b = fit_logistic(torch.cat([x, -x]), torch.cat([torch.ones(50), torch.zeros(50)]), bias=False)
    assert b == 0.0 and w.shape == (3,)
    with pytest.raises(ValueError, match="expected x"):
        fit_logistic(x, torch.ones(49))


def test_group_folds_keep_groups_together():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e"]
    f = group_folds(groups, 3, seed=1)
    for gname in set(groups):
        assert len({f[i] for i, x in enumerate(groups) if x == gname}) == 1
    assert set(f) == {0, 1, 2}
    with pytest.raises(ValueError, match="cannot fill"):
        group_folds(["a", "a"], 2)


def test_cross_validation_is_chance_on_noise_and_learns_signal():
    # Pure noise labels: out-of-fold accuracy must be near 0.5 (an in-sample fit would be far above it).
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(400, 60))).float()
    noise = torch.from_numpy(rng.integers(0, 2, 400)).float()
    folds = group_folds(list(range(400)), 5)
    s, l2 = cross_val_scores(x, noise, folds)
    assert abs(((s > 0) == noise.numpy().astype(bool)).mean() - 0.5) < 0.08 and len(l2) == 5
    w_in, b_in = fit_logistic(x, noise, 1e-3)
    assert ((x @ w_in + b_in > 0).float() == noise).float().mean() > 0.6  # in-sample overfits
    signal = (x[:, 0] > 0).float()
    s, _ = cross_val_scores(x, signal, folds)
    assert ((s > 0) == signal.numpy().astype(bool)).mean() > 0.9


def tiny() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=50, ffn_dim=64,
                                   family="llama", max_seq_len=64, tie_embeddings=True))  # fmt: skip


def test_last_token_features_equal_the_model_path():
    m = tiny().eval()
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8]]
    f = last_token_features(m, seqs)
    with torch.no_grad():
        ref = m.norm(m.hidden_states(torch.tensor([seqs[1]])))[0, -1]
    assert f.shape == (2, 32) and torch.allclose(f[1], ref, atol=1e-6)
    with pytest.raises(ValueError, match="empty sequence"):
        last_token_features(m, [[1], []])


def test_fit_reward_head_learns_a_preference_and_the_forward_agrees():
    # chosen answers end in token 7, rejected ones in token 9: the last-token features separate them.
    m = tiny().eval()
    rng = np.random.default_rng(0)

    def ex(end: int) -> SFTExample:
        ids = [int(t) for t in rng.integers(10, 50, 6)] + [end]
        return SFTExample(ids, [-100] * 3 + ids[3:])

    train = [TokenizedPair(ex(7), ex(9)) for _ in range(40)]
    held = [TokenizedPair(ex(7), ex(9)) for _ in range(20)]
    rm = RewardModel(m)
    fit = fit_reward_head(rm, train, l2=0.1)
    assert fit["train_accuracy"] == 1.0
    rw, rl = rm.score_pairs(held, pad_id=0)
    assert bool((rw > rl).all())
    # centred: the training rewards average to 0
    tw, tl = rm.score_pairs(train, pad_id=0)
    assert abs(float(torch.cat([tw, tl]).mean())) < 1e-4
    with pytest.raises(ValueError, match="no training pairs"):
        fit_reward_head(rm, [])
