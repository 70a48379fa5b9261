"""Shared fixtures: where the shared data sets and the packaged real models are.

Data comes from LMFORGE_DATA (default ../shared/data). A missing data folder or model package is a
failure with the command that fixes it, not a silent skip: the README's test command installs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmforge.registry import resolve

ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    path = Path(os.environ.get("LMFORGE_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(
            f"shared data folder {path} not found; set LMFORGE_DATA to the folder with text/, tokenizers/ ..."
        )
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return resolve("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    return resolve("gemma3-270m")


@pytest.fixture(scope="session")
def tiktoken_cache(data: Path, tmp_path_factory) -> Path:
    """Lay the shared rank files out under the names tiktoken expects, so it never goes online."""
    names = {
        "gpt2_openai/vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
        "gpt2_openai/encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
        "tiktoken/cl100k_base.tiktoken": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "tiktoken/o200k_base.tiktoken": "fb374d419588a4632f3f557e76b4b70aebbca790",
    }
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for src, dst in names.items():
        (cache / dst).symlink_to(data / "tokenizers" / src)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache
