"""Data: corpora → token shards → batches.

iter_documents(paths)            text/jsonl/parquet files, folders and globs → documents (strings)
tokenize_corpus(paths, tok, out) documents → train/val token shards (memmaps) + meta.json, resumable
TokenShards(out, split)          a split's tokens (read-only memmap) and document starts
RandomWindowLoader(...)          random (x, y) windows, nanoGPT style, with a saveable position
"""

from lmforge.data.corpus import iter_documents
from lmforge.data.loader import RandomWindowLoader
from lmforge.data.shards import TokenShards, tokenize_corpus

__all__ = ["RandomWindowLoader", "TokenShards", "iter_documents", "tokenize_corpus"]
