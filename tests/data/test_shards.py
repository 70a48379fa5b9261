"""Documents → token shards: exact round trips, a stable split, workers=1 == workers=2, resumption, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import TokenShards, iter_documents, tokenize_corpus
from lmforge.data.shards import is_val, separator_ids
from lmforge.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def corpus(data, tmp_path_factory) -> list[Path]:
    """Real text: 300 C4 pages and the first ~1,900 speeches of Shakespeare (~220k SmolLM2 tokens)."""
    root = tmp_path_factory.mktemp("corpus")
    text = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (root / "plays.txt").write_text(text[:250_000], encoding="utf-8")
    return [data / "text" / "c4_demo.jsonl", root / "plays.txt"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if not f.name.startswith(".")}


def test_round_trip_split_and_meta(tok, corpus, tmp_path):
    out = tokenize_corpus(corpus, tok, tmp_path / "s", val_fraction=0.05, shard_tokens=40_000, workers=1,
                          tokenizer_name="smollm2-135m-instruct", progress=False)  # fmt: skip
    docs = list(iter_documents(corpus))
    meta = json.loads((out / "meta.json").read_text())
    val_ids = [i for i in range(len(docs)) if is_val(i, 0, 0.05)]
    assert meta["split"]["val_documents"] == val_ids and 0.03 < len(val_ids) / len(docs) < 0.07
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 49152 and meta["documents"] == len(docs)
    assert meta["tokenizer"] == "smollm2-135m-instruct" and meta["tokenizer_class"] == "BPETokenizer"
    # SmolLM2's separator is <|endoftext|> (id 0), not its chat EOS <|im_end|>; it prepends no BOS
    assert (meta["eos_id"], meta["bos_id"]) == (0, None) == tuple(reversed(separator_ids(tok)))
    train, val = TokenShards(out, "train"), TokenShards(out, "val")
    assert len(train.shards) > 3 and all(s.dtype == np.uint16 for s in train.shards)
    for shards, ids in ((train, [i for i in range(len(docs)) if i not in set(val_ids)]), (val, val_ids)):
        # decoding a split gives its documents, in corpus order, each followed by the separator
        assert tok.decode(shards.tokens.tolist()) == "".join(docs[i] + "<|endoftext|>" for i in ids)
        assert shards.num_documents == len(ids) == meta["splits"][shards.split]["documents"]
        assert shards.num_tokens == meta["splits"][shards.split]["tokens"] == len(shards)
        for k in (0, len(ids) // 2, len(ids) - 1):  # boundaries: document(k) is one document
            assert tok.decode(shards.document(k).tolist()) == docs[ids[k]] + "<|endoftext|>"
    # documents never straddle shards: every shard starts at a document start
    assert set(train.bases[:-1].tolist()) <= set(train.doc_starts.tolist())
    # reads across a shard boundary are the concatenation
    b = int(train.bases[1])
    assert np.array_equal(train.read(b - 5, 10), np.concatenate([train.shards[0][-5:], train.shards[1][:5]]))
    with pytest.raises(IndexError):
        train.read(train.num_tokens - 3, 4)


def test_workers_give_identical_files(tok, corpus, tmp_path):
    a = tokenize_corpus(corpus, tok, tmp_path / "w1", shard_tokens=50_000, workers=1, progress=False)
    b = tokenize_corpus(corpus, tok, tmp_path / "w2", shard_tokens=50_000, workers=2, progress=False)
    fa, fb = files_of(a), files_of(b)
    assert len(fa) > 6 and fa == fb  # byte for byte, meta.json included


class Counter:
    """Counts SmolLM2's encode calls; optionally fails after `fail_after` (an interrupted run)."""

    def __init__(self, tok, fail_after: int | None = None):
        self.tok, self.calls, self.fail_after = tok, 0, fail_after

    def __call__(self, text: str, allow_special: bool = True, add_special_tokens: bool = False) -> list[int]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return type(self.tok).encode(self.tok, text, allow_special, add_special_tokens)


def test_resume_skips_finished_shards(tok, corpus, tmp_path, monkeypatch):
    kwargs = dict(val_fraction=0.05, shard_tokens=30_000, workers=1, progress=False)
    clean = files_of(tokenize_corpus(corpus, tok, tmp_path / "clean", **kwargs))
    n_docs = json.loads(clean["meta.json"])["documents"]

    out = tmp_path / "s"
    monkeypatch.setattr(tok, "encode", Counter(tok, fail_after=n_docs // 2))
    with pytest.raises(KeyboardInterrupt):  # interrupted halfway: some shards done, no meta.json
        tokenize_corpus(corpus, tok, out, **kwargs)
    done = sorted(f.name for f in out.glob("*.done"))
    assert not (out / "meta.json").exists() and len(done) >= 2
    mtimes = {f.name: f.stat().st_mtime_ns for f in out.iterdir() if f.name.split(".")[0] + ".done" in done}

    counter = Counter(tok)
    monkeypatch.setattr(tok, "encode", counter)
    tokenize_corpus(corpus, tok, out, **kwargs)
    # only the documents after each split's last finished shard were encoded again ...
    assert 0 < counter.calls < n_docs * 0.75
    # ... the finished shards were not rewritten, and the result is what an uninterrupted run writes
    assert all((out / name).stat().st_mtime_ns == t for name, t in mtimes.items())
    assert files_of(out) == clean

    counter.calls = 0  # a finished folder: nothing is encoded, nothing rewritten
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    tokenize_corpus(corpus, tok, out, **kwargs)
    assert counter.calls == 0 and {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before

    # other settings: rebuilt from scratch, the old shards removed
    tokenize_corpus(corpus, tok, out, **{**kwargs, "seed": 1, "shard_tokens": 10**6})
    assert counter.calls == n_docs and sorted(files_of(out)) == [
        "meta.json", "train_00000.bin", "train_00000.done", "train_00000.idx.npy",
        "val_00000.bin", "val_00000.done", "val_00000.idx.npy",
    ]  # fmt: skip


class WideTokenizer:
    """A character tokenizer with a 70,000-id vocabulary (so shards need uint32) that prepends BOS."""

    special_tokens = {"<s>": 69998, "</s>": 69999}
    vocab_size, bos_id, eos_id, add_bos = 70_000, 69998, 69999, True

    def encode(self, text: str) -> list[int]:
        return [60_000 + ord(c) for c in text]

    def decode(self, ids) -> str:
        return "".join({69998: "<s>", 69999: "</s>"}.get(i) or chr(i - 60_000) for i in ids)


def test_uint32_and_bos(tmp_path):
    (tmp_path / "c.txt").write_text("alpha\n\nbeta\n\ngamma")
    out = tokenize_corpus(tmp_path / "c.txt", WideTokenizer(), tmp_path / "s", val_fraction=0.0,
                          progress=False, workers=1)  # fmt: skip
    shards = TokenShards(out)
    assert shards.dtype == np.uint32 and shards.meta["bos_id"] == 69998
    assert WideTokenizer().decode(shards.tokens.tolist()) == "<s>alpha</s><s>beta</s><s>gamma</s>"
    assert TokenShards(out, "val").num_tokens == 0 and TokenShards(out, "val").num_documents == 0
    # explicit separators override the rule
    out = tokenize_corpus(tmp_path / "c.txt", WideTokenizer(), tmp_path / "s2", val_fraction=0.0,
                          eos_id=60_010, bos_id=None, progress=False, workers=1)  # fmt: skip
    assert WideTokenizer().decode(TokenShards(out).tokens.tolist()) == "alpha\nbeta\ngamma\n"


def test_special_token_text_is_text(tok, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "a<|endoftext|>b"}) + "\n")
    out = tokenize_corpus(tmp_path / "c.jsonl", tok, tmp_path / "s", val_fraction=0.0, progress=False)
    ids = TokenShards(out).tokens.tolist()
    assert ids.count(0) == 1 and ids[-1] == 0 and tok.decode(ids) == "a<|endoftext|>b<|endoftext|>"


def test_bad_input(tok, tmp_path):
    (tmp_path / "c.txt").write_text("one\n\ntwo")
    for kwargs, message in [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"shard_tokens": 0}, "shard_tokens must be positive"),
        ({"val_fraction": 0.999999}, "no training tokens"),
    ]:
        with pytest.raises(ValueError, match=message):
            tokenize_corpus(tmp_path / "c.txt", tok, tmp_path / "s", progress=False, **kwargs)

    class NoEnd(WideTokenizer):
        special_tokens, eos_id = {}, None

    with pytest.raises(ValueError, match="no end-of-document token"):
        tokenize_corpus(tmp_path / "c.txt", NoEnd(), tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="missing.txt does not exist"):
        tokenize_corpus(tmp_path / "missing.txt", tok, tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="not a finished token-shard folder"):
        TokenShards(tmp_path)
    out = tokenize_corpus(tmp_path / "c.txt", tok, tmp_path / "s", val_fraction=0.0, progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        TokenShards(out, "test")
    with open(out / "train_00000.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"train_00000\.bin: missing or not \d+ tokens long"):
        TokenShards(out)
