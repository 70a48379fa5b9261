"""The three pretraining objectives run end to end (clm on packed rows, masked LM, span corruption):
what each feeds the model, that each learns, and that a resumed run repeats the uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.encoder_decoder import EncoderDecoder
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import BPETokenizer, train_bpe
from lmforge.train.config import TrainConfig
from lmforge.train.pretrain import build_run, prepare_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objectives")
    # documents of different lengths, so packing puts several in a row
    text = "\n\n".join(
        f"Once upon a time a cat number {i} sat on a mat" + " and was happy" * (i % 4) + "."
        for i in range(1500)
    )
    (tmp / "corpus.txt").write_text(text)
    vocab, merges = train_bpe(tmp / "corpus.txt", 300, ["<|endoftext|>"], progress=False)
    BPETokenizer(vocab, merges, ["<|endoftext|>"]).save(tmp / "tok.json")
    cfg = TrainConfig(
        data=[str(tmp / "corpus.txt")], tokenizer=str(tmp / "tok.json"), shards_dir=str(tmp / "s")
    )
    return prepare_shards(cfg)


def config(shards, tmp_path, **kw) -> TrainConfig:
    base = TrainConfig(data=[str(shards)], depth=1, seq_len=32, batch_size=8, lr=3e-3, warmup_steps=5,
                       max_steps=40, eval_every=40, eval_batches=2, ckpt_every=0, log_every=5,
                       out_dir=str(tmp_path / "run"), device="cpu")  # fmt: skip
    return replace(base, **kw)


def test_packed_documents_do_not_see_each_other():
    """A packed row with segment ids and restarted positions gives each document exactly the logits
    it gets alone — the block-diagonal mask and the per-document RoPE positions together."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)
    for causal in (True, False):  # the decoder (clm) and the encoder (mlm)
        model = Transformer(replace(cfg, causal=causal)).init_weights().eval()
        docs = [torch.randint(0, 50, (n,)) for n in (5, 7, 3)]
        row = torch.cat(docs + [torch.zeros(1, dtype=torch.long)])[None]  # (1, 16), one padding token
        segments = torch.cat([torch.full((len(d),), k) for k, d in enumerate(docs)] + [torch.tensor([-1])])
        positions = torch.cat([torch.arange(len(d)) for d in docs] + [torch.tensor([0])])
        packed = model(row, position_ids=positions[None], segment_ids=segments[None])[0]
        at = 0
        for d in docs:
            alone = model(d[None])[0]
            torch.testing.assert_close(packed[at : at + len(d)], alone, atol=1e-5, rtol=1e-5)
            at += len(d)
        # and without the segment ids the documents do mix: the check above can fail
        mixed = model(row, position_ids=positions[None])[0]
        assert not torch.allclose(mixed[5:12], model(docs[1][None])[0], atol=1e-3)


def test_packed_clm_batches_and_learning(shards, tmp_path):
    trainer = build_run(config(shards, tmp_path, loader="packed", seq_len=64))
    x, y, segments, positions = trainer.train_loader.next_batch()
    batch = trainer.batch_fn(x, y, segments, positions)
    assert set(batch) == {"input_ids", "labels", "segment_ids", "position_ids"}
    assert (segments.max(dim=1).values >= 1).any()  # several documents share a row
    summary = trainer.fit(progress=False)
    first = trainer.history[0]["loss"]
    assert summary["val_loss"] < first / 2 and 0 < summary["val_bpb"] < 3


def test_masked_lm_run(shards, tmp_path):
    trainer = build_run(config(shards, tmp_path, objective="mlm"))
    model = trainer.model
    vocab = int(trainer.train_loader.shards.meta["vocab_size"])
    assert not model.config.causal and model.config.vocab_size == vocab + 1  # [MASK] = one extra id
    x, y = trainer.train_loader.next_batch()
    torch.manual_seed(0)
    batch = trainer.batch_fn(x, y)
    chosen = batch["labels"] != -100
    assert 0.05 < chosen.float().mean() < 0.3  # ~15% of the tokens are targets
    assert torch.equal(batch["labels"][chosen], x[chosen])  # the target is the original token
    assert (batch["input_ids"][chosen] == vocab).float().mean() > 0.5  # mostly [MASK] (80%)
    assert torch.equal(batch["input_ids"][~chosen], x[~chosen])  # the rest untouched
    eos = trainer.train_loader.shards.eos_id
    assert not chosen[x == eos].any()  # EOS (a special token) is never a target
    summary = trainer.fit(progress=False)
    assert summary["val_loss"] < trainer.history[0]["loss"] - 1.5 and "val_bpb" not in summary
    assert trainer.sample() == ""  # an encoder does not generate


def test_span_corruption_run(shards, tmp_path):
    trainer = build_run(config(shards, tmp_path, objective="span"))
    model = trainer.model
    assert isinstance(model, EncoderDecoder)
    vocab = int(trainer.train_loader.shards.meta["vocab_size"])
    x, y = trainer.train_loader.next_batch()
    batch = trainer.batch_fn(x, y)
    inputs, dec, labels = batch["input_ids"], batch["decoder_input_ids"], batch["labels"]
    # 32 tokens: round(4.8) = 5 noise tokens in 2 spans → inputs 32 - 5 + 2, targets 5 + 2 + 1
    assert inputs.shape == (8, 29) and labels.shape == (8, 8)
    assert model.config.vocab_size == vocab + 3  # 3 sentinels
    assert torch.equal(dec[:, 1:], labels[:, :-1]) and (dec[:, 0] == trainer.train_loader.shards.eos_id).all()
    assert (labels[:, 0] == vocab).all() and (labels[:, -1] == vocab + 2).all()  # first and closing sentinels
    assert ((inputs >= vocab).sum(dim=1) == 2).all()  # one sentinel per span in the encoder input
    summary = trainer.fit(progress=False)
    assert summary["val_loss"] < trainer.history[0]["loss"] - 1.5


@pytest.mark.parametrize("objective,loader", [("mlm", "packed"), ("span", "random")])
def test_resume_is_exact_for_every_objective(shards, tmp_path, objective, loader):
    """Masks and spans are drawn from torch's RNG: the checkpoint keeps it, so 10 + 10 steps = 20 steps."""
    whole = build_run(config(shards, tmp_path / "a", objective=objective, loader=loader, max_steps=20,
                             eval_every=5))  # fmt: skip
    whole.fit(progress=False)
    first = build_run(config(shards, tmp_path / "b", objective=objective, loader=loader, max_steps=20,
                             eval_every=5))  # fmt: skip
    first.cfg.max_steps = 10  # stop after step 10 (the schedule's horizon stays 20; a checkpoint is written)
    first.fit(progress=False)
    second = build_run(config(shards, tmp_path / "b", objective=objective, loader=loader, max_steps=20,
                              eval_every=5))  # fmt: skip
    assert second.resume()
    second.fit(progress=False)
    losses = [(r["loss"], r.get("val_loss")) for r in whole.history]
    assert losses == [(r["loss"], r.get("val_loss")) for r in second.history]
    lines = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 21))


def test_span_corruption_with_packing_is_refused(shards, tmp_path):
    with pytest.raises(ValueError, match="span reads random windows"):
        build_run(config(shards, tmp_path, objective="span", loader="packed"))
