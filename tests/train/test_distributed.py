"""Data parallel training: 2 processes × B/2 rows take the step 1 process × B rows takes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmforge.train.config import TrainConfig
from lmforge.train.distributed import World, shutdown, wrap_model
from lmforge.train.trainer import Trainer
from tests.train.test_trainer import tiny_model

ROWS, SEQ, STEPS = 8, 16, 3


class RowsLoader:
    """The same B rows every process would draw, of which this rank keeps rows rank, rank + size, ..."""

    def __init__(self, rank: int = 0, size: int = 1):
        self.gen = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, 64, (3000,), generator=torch.Generator().manual_seed(1))
        self.rank, self.size = rank, size

    def next_batch(self):
        starts = torch.randint(0, len(self.tokens) - SEQ - 1, (ROWS,), generator=self.gen)
        rows = torch.stack([self.tokens[s : s + SEQ + 1] for s in starts.tolist()])[self.rank :: self.size]
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])


def train(rank: int, size: int, mode: str, port: int, out: str) -> None:
    torch.set_num_threads(1)
    world = None
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
        world = World(rank, size, 0, "gloo")
    model = tiny_model()
    wrapped = wrap_model(model, world, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # after wrapping: FSDP replaces the parameters
    cfg = TrainConfig(out_dir=out, max_steps=STEPS, eval_every=0, ckpt_every=0, log_every=1, grad_clip=0.5)
    Trainer(cfg, wrapped, [opt], lambda s: 1e-2, RowsLoader(rank, size), world=world).fit(progress=False)
    if mode == "fsdp" and world is not None:
        state = {k: v.full_tensor() for k, v in model.state_dict().items()}
    else:
        state = model.state_dict()
    if rank == 0:
        torch.save(state, os.path.join(out, f"{mode}-{size}.pt"))
    shutdown(world)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_with_half_the_rows_equal_one_rank(mode, tmp_path):
    train(0, 1, mode, 0, str(tmp_path))
    mp.spawn(train, args=(2, mode, free_port(), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / f"{mode}-1.pt", weights_only=True)
    two = torch.load(tmp_path / f"{mode}-2.pt", weights_only=True)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = max((one[k] - tiny_model().state_dict()[k]).abs().max().item() for k in one)
    assert moved > 1e-3  # the steps did change the weights: the comparison is not of two untouched models
