import pytest
import torch

from lmforge.retrieval.store import atomic_folder
from lmforge.train.steps import LossBar, optimizer_step


def test_optimizer_step_applies_a_clipped_update():
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    loss = (w * torch.tensor([30.0, 40.0])).sum()  # gradient (30, 40), norm 50 → clipped to (0.6, 0.8)
    value = optimizer_step(opt, loss, [w], max_norm=1.0)
    assert value == pytest.approx(-10.0)
    assert torch.allclose(w.detach(), torch.tensor([0.4, -1.8]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_before_the_weights_change(bad):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    loss = (w * bad).sum()
    with pytest.raises(FloatingPointError, match="dpo loss is .* at step 7"):
        optimizer_step(opt, loss, [w], what="dpo loss", step=7)
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def test_loss_bar_disabled_is_silent(capsys):
    bar = LossBar(3, "x", enabled=False)
    bar.update(1.0, kl=0.1)
    bar.close()
    assert capsys.readouterr().err == ""


def test_atomic_folder_keeps_the_old_folder_when_the_body_fails(tmp_path):
    target = tmp_path / "idx"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("crash mid-save")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary folder left behind
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("replaced")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
