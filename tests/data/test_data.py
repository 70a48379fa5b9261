"""Corpora → token shards → batches: round trips, a stable split, reuse, exact loader state, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.data import RandomWindowLoader, TokenShards, iter_documents, tokenize_corpus
from lmforge.tokenizer import BPETokenizer, train_bpe


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text("the cat sat on the mat. the dog ate the log. " * 200)
    vocab, merges = train_bpe(path, 300, ["<|endoftext|>"], progress=False)
    return BPETokenizer(vocab, merges, ["<|endoftext|>"])


def corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first story about a cat.\n\nsecond story, a dog.\n\n\nthird one ends.\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "a web page"}) + "\n\n" + json.dumps({"text": "more"})
    )
    return [tmp_path / "a.txt", tmp_path / "b.jsonl"]


def test_documents_from_text_and_jsonl(tmp_path):
    docs = list(iter_documents(corpus(tmp_path)))
    assert docs == [
        "first story about a cat.",
        "second story, a dog.",
        "third one ends.",
        "a web page",
        "more",
    ]
    assert list(iter_documents([tmp_path])) == docs  # a folder: the same files, sorted
    assert list(iter_documents([str(tmp_path / "*.txt")])) == docs[:3]  # a glob


def test_shards_round_trip_split_and_reuse(tmp_path, tok):
    paths = corpus(tmp_path)
    out = tokenize_corpus(paths, tok, tmp_path / "shards", val_fraction=0.4, seed=1, tokenizer_name="t")
    train, val = TokenShards(out, "train"), TokenShards(out, "val")
    eos = tok.token_to_id("<|endoftext|>")
    docs = list(iter_documents(paths))
    # every document lands in exactly one split, encoded and followed by EOS, in corpus order
    joined = {s: tok.decode([i for i in sh.tokens.tolist()]) for s, sh in (("train", train), ("val", val))}
    got = sorted(joined["train"].split("<|endoftext|>")[:-1] + joined["val"].split("<|endoftext|>")[:-1])
    assert got == sorted(docs)
    assert train.meta["dtype"] == "uint16" and train.tokens[-1] == eos
    assert len(train.doc_starts) + len(val.doc_starts) == len(docs) and len(val.doc_starts) > 0
    # the same inputs and settings: the folder is reused, not rewritten
    before = (out / "train.bin").stat().st_mtime_ns
    tokenize_corpus(paths, tok, out, val_fraction=0.4, seed=1, tokenizer_name="t")
    assert (out / "train.bin").stat().st_mtime_ns == before
    # another folder, with workers: the same tokens
    again = tokenize_corpus(
        paths, tok, tmp_path / "w2", val_fraction=0.4, seed=1, tokenizer_name="t", workers=2
    )
    assert np.array_equal(TokenShards(again, "train").tokens, train.tokens)


def test_loader_state_and_ranks(tmp_path, tok):
    (tmp_path / "c.txt").write_text(
        "\n\n".join(f"document number {i} about cats and dogs" for i in range(300))
    )
    out = tokenize_corpus([tmp_path / "c.txt"], tok, tmp_path / "s", val_fraction=0.1)
    shards = TokenShards(out, "train")
    a = RandomWindowLoader(shards, 4, 16, seed=3)
    x, y = a.next_batch()
    assert x.shape == (4, 16) and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = RandomWindowLoader(shards, 4, 16, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(e[0], g[0]) for e, g in zip(expected, [b.next_batch() for _ in range(3)]))
    # two ranks with 2 rows each cover one rank's 4 rows
    one = RandomWindowLoader(shards, 4, 16, seed=5).next_batch()[0]
    r0 = RandomWindowLoader(shards, 2, 16, seed=5, rank=0, world_size=2).next_batch()[0]
    r1 = RandomWindowLoader(shards, 2, 16, seed=5, rank=1, world_size=2).next_batch()[0]
    assert torch.equal(torch.stack([r0[0], r1[0], r0[1], r1[1]]), one)


def test_bad_input_names_the_file(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    cases = {
        "empty.txt": "empty.txt: no text",
        "latin1.txt": "latin1.txt: not UTF-8 text (invalid byte at offset 3)",
        "bad.jsonl": "bad.jsonl:2: not a JSON line",
        "nofield.jsonl": "nofield.jsonl:1: no string field 'text'",
        "missing.txt": "missing.txt does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError) as e:
            list(iter_documents([tmp_path / name]))
        assert message in str(e.value)
    (tmp_path / "tiny.txt").write_text("hi")
    out = tokenize_corpus([tmp_path / "tiny.txt"], tok, tmp_path / "tiny", val_fraction=0.0)
    with pytest.raises(ValueError, match="fewer than one window"):
        RandomWindowLoader(TokenShards(out, "train"), 2, 64)
    with pytest.raises(ValueError, match="not a finished token-shard folder"):
        TokenShards(tmp_path, "train")
