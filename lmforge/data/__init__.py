"""Data: corpora → token shards → batches.

iter_documents(paths)              text/jsonl/parquet files, folders and globs → documents (strings)
tokenize_corpus(paths, tok, out)   documents → train/val token shards (memmaps) + meta.json; parallel, resumable
TokenShards(out, split)            a split's tokens (read-only memmaps) and document boundaries
RandomWindowLoader(shards, B, T)   random (x, y) windows, nanoGPT style
PackedLoader(shards, B, T)         whole documents packed into rows by best fit, padding masked
mlm_mask(ids, info)                BERT's 80/10/10 masking → (inputs, labels)
span_corruption(ids, sentinels)    T5's span corruption → (encoder inputs, decoder targets)

Both loaders save and restore their exact position (state_dict) and split batches across DDP ranks.
"""

from lmforge.data.corpus import corpus_files, iter_documents
from lmforge.data.loader import PackedLoader, RandomWindowLoader
from lmforge.data.objectives import (
    MaskingInfo,
    mlm_mask,
    random_spans_noise_mask,
    span_corruption,
    span_corruption_lengths,
)
from lmforge.data.shards import TokenShards, tokenize_corpus

__all__ = [
    "MaskingInfo",
    "PackedLoader",
    "RandomWindowLoader",
    "TokenShards",
    "corpus_files",
    "iter_documents",
    "mlm_mask",
    "random_spans_noise_mask",
    "span_corruption",
    "span_corruption_lengths",
    "tokenize_corpus",
]
