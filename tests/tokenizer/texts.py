"""The texts every tokenizer test runs over: the shared corpora plus hand-picked hard cases."""

from __future__ import annotations

import json
from pathlib import Path

HARD_CASES = [
    "",
    " ",
    "hello world",
    "Hello, World! It's a dog's life; they'll've gone... won't they?",
    "HELLO'S WORLD'LL I'M YOU'VE SHE'D",
    "emoji: 🤗🔥👩‍👩‍👧‍👦 🇫🇷 ❤️ 🏳️‍🌈",
    "中文分词测试：你好，世界！日本語のテキスト。한국어 텍스트",
    "combining: e\u0301 a\u0300\u0301 n\u0303 Z\u0351\u0352\u0353 ḁ̴̛͉",
    "Ελληνικά και русский язык и עברית ו العربية",
    "long   whitespace      runs\t\t\tand\n\n\n\nnewlines \n \n  \r\n\r\n",
    " " * 300 + "x" + "\n" * 100,
    "digits 1 12 123 1234 12345 123456 3.14159 1,000,000 0x1F 1e-10 ٣٤٥ ⅷ ½",
    "  1  22\n333 ",
    "CamelCaseWords andXMLHttpRequest getHTTPResponseCode iPhone McDonald's",
    "punctuation!!! ??? ... --- *** ### $$$ %%% &&& ((())) [[]] {{}} <<>> ///\\\\\\ ```code```",
    "tabs\tin\tthe\tmiddle and trailing spaces   ",
    "zero\u200bwidth\u200djoiner\ufeffbom\u00a0nbsp\u2028line\u2029para",
    "control \x00\x01\x07\x1b[31mred\x1b[0m\x7f",
    "def f(x):\n    return x ** 2  # comment\n\n\nclass A:\n\tpass\n",
    "URLs https://example.com/path?q=1&r=2#frag and emails a.b@c.de",
    "a" * 2000,
    "ab" * 700,
    "invalid surrogates: \ud800 x \udfff y \ud83d\ude00 z",
    "<|endoftext|> in the middle <|endoftext|>",
    "'s 's 'S 'll 'LL 're",
    "\u3000ideographic space and \u2003em space",
]


def corpus_texts(data: Path) -> dict[str, str]:
    """Every text file of shared/data/text, whole (non-UTF-8 bytes replaced)."""
    root = data / "text"
    files = sorted(root.rglob("*.txt")) + sorted(root.rglob("*.raw"))
    texts = {str(p.relative_to(root)): p.read_text(encoding="utf-8", errors="replace") for p in files}
    with open(root / "c4_demo.jsonl", encoding="utf-8") as f:
        texts["c4_demo.jsonl"] = "\n\n".join(json.loads(line)["text"] for line in f if line.strip())
    return texts


def paragraphs(text: str, limit: int | None = None) -> list[str]:
    """Blank-line separated paragraphs (kept with their trailing newlines)."""
    parts = [p + "\n\n" for p in text.split("\n\n") if p.strip()]
    return parts[:limit] if limit else parts
