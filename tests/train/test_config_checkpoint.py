"""Run configs (types checked, unknown fields named) and atomic checkpoints."""

from __future__ import annotations

import argparse

import pytest
import torch

from lmforge.train.checkpoint import (
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lmforge.train.config import TrainConfig, add_config_arguments, load_config, overrides_from_args


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.003\nmax_steps: 50\ndata: [a.txt, b.txt]\nmodel_overrides: {dim: 64}\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--max-steps", "7", "--no-resume", "--precision", "bf16"])
    cfg = load_config(path, overrides_from_args(args))
    assert (cfg.lr, cfg.max_steps, cfg.resume, cfg.precision) == (0.003, 7, False, "bf16")
    assert cfg.data == ["a.txt", "b.txt"] and cfg.model_overrides == {"dim": 64}
    assert load_config(None).to_dict() == TrainConfig().to_dict()


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr: fast\n", "field 'lr' must be float"),
        ("max_steps: 1.5\n", "field 'max_steps' must be int"),
        ("learning_rate: 0.1\n", "unknown field(s) 'learning_rate'"),
        ("precision: fp8\n", "field 'precision' must be one of fp32, bf16, fp16"),
        ("data: 3\n", "field 'data' must be a list of strings"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("lr: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_field_and_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml") as e:
        load_config(path)
    assert message in str(e.value)


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 3)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"model": model.state_dict(), "step": step}, keep_last=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_0000003.pt", "step_0000004.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 4

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 5, {"step": 5}, keep_last=2)
    # the failed save left no partial file, and the previous checkpoints are intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000003.pt", "step_0000004.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 4


def test_a_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": torch.nn.Linear(4, 3).state_dict()})
    state = load_checkpoint(latest_checkpoint(tmp_path))
    with pytest.raises(ValueError, match=r"another shape, e.g. weight: checkpoint \(3, 4\), model \(5, 4\)"):
        load_model_state(torch.nn.Linear(4, 5), state["model"], "ckpt")
    (tmp_path / "step_0000009.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable lmforge checkpoint"):
        load_checkpoint(tmp_path / "step_0000009.pt")


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expected = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))
    set_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"])
    got = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))
    assert (
        torch.equal(expected[0], got[0]) and expected[1:3] == got[1:3] and np.array_equal(expected[3], got[3])
    )
