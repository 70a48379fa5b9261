"""SentencePiece-style BPE against its references: Gemma 3's tokenizer as transformers builds it from the
GGUF, the `sentencepiece` library itself (fed the same pieces, scores and types), and `tokenizers`.

transformers' GGUF converter turns Gemma's whitespace-run pieces ("  " .. 31 spaces, user-defined in the
model) into ordinary BPE pieces reached by merges; SentencePiece (and llama.cpp) match them whole, longest
first. The two agree on runs of up to 31 spaces and split longer runs differently (40 spaces: 16 + 24 in
transformers, 31 + 9 in SentencePiece). We follow SentencePiece; `test_long_space_runs` pins this down.
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import time

import pytest

from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.gguf_metadata import read_gguf_metadata
from lmforge.tokenizer.sentencepiece import SentencePieceTokenizer, load_sentencepiece
from tests.tokenizer.texts import HARD_CASES, corpus_texts, paragraphs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="transformers is a dev oracle: pip install -e '.[dev]'"
)
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a dev oracle: pip install -e '.[dev]'")
spm = pytest.importorskip("sentencepiece", reason="sentencepiece is a dev oracle: pip install -e '.[dev]'")

LONG_SPACES = re.compile(" {32,}")  # where transformers' GGUF conversion and SentencePiece differ
LONG_RUNS = re.compile(r"([ \n\t])\1{31,}")  # ties between equal-score pieces: see the dummy-prefix test

EXTRA_CASES = [
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    " ",
    "  ",
    "\t",
    "\t\tindented\twith tabs \t mixed",
    "lines\nand\n\nblank\n\n\nlines\r\nwindows\r\n",
    " \n \n\n  \n",
    "emoji 😀👍🏽🧑‍🚀🫠 and flags 🇯🇵🇧🇷",
    "中文：我爱自然语言处理。日本語：こんにちは世界。한국어: 안녕하세요",
    "rare scripts: ᚠᚢᚦ 𓀀𓀁 𐀀𐀁 ꦄꦏ \U0010ffff \ue000 𒀀",
    "combining: a\u0301\u0302\u0303 q\u0307\u0323 \u0915\u094d\u0937 Z\u0351\u0352\u0353",
    "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> <pad><unk><mask>",
    "<start_of_turn<end_of_turn>> <<bos>> <bo s>",
    "<unused0><unused99><unused6241>",
    "[multimodal]<start_of_image><end_of_image>",
    "<table><tr><td>cell</td></tr></table> <b>bold</b> x> </y a>  </b",
    "literal ▁ and ▁▁ and ▁x▁",
    "<0x41> <0xFF> <0x0A>",
    "a" * 5000,
    "ab" * 3000,
    "x" + "\n" * 40 + "y" + "\t" * 40,
    "",
]


def sample_texts(data) -> list[str]:
    texts = []
    for text in corpus_texts(data).values():
        texts.extend(paragraphs(text, 120))
        texts.extend(line for line in text.splitlines(keepends=True)[:300] if line.strip())
    return texts + [t for t in HARD_CASES if "\ud800" not in t] + EXTRA_CASES


@pytest.fixture(scope="module")
def texts(data) -> list[str]:
    return sample_texts(data)


@pytest.fixture(scope="module")
def gemma(gemma_gguf) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_gguf(gemma_gguf)


@pytest.fixture(scope="module")
def hf_gemma(gemma_gguf):
    """transformers' Gemma tokenizer, converted from the GGUF (slow: ~15 s, so once per module)."""
    return transformers.AutoTokenizer.from_pretrained(str(gemma_gguf.parent), gguf_file=gemma_gguf.name)


# ---------------------------------------------------------------------- SentencePiece's own model file
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields are 10-byte varints
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _int(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def sp_model_proto(pieces, scores, types, *, unk_id, byte_fallback, add_dummy_prefix) -> bytes:
    """A SentencePiece ModelProto (BPE, identity normalizer), written by hand: protobuf is not installed.

    Fields: ModelProto.pieces=1 {piece=1, score=2, type=3}, trainer_spec=2 {model_type=3 (BPE=2),
    byte_fallback=35, unk_id=40}, normalizer_spec=3 {name=1, add_dummy_prefix=3,
    remove_extra_whitespaces=4, escape_whitespaces=5}.
    """
    out = bytearray()
    for piece, score, typ in zip(pieces, scores, types):
        out += _field(
            1, _field(1, piece.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", score) + _int(3, typ)
        )
    out += _field(2, _int(3, 2) + _int(35, int(byte_fallback)) + _int(40, unk_id))
    out += _field(3, _field(1, b"identity") + _int(3, int(add_dummy_prefix)) + _int(4, 0) + _int(5, 1))
    return bytes(out)


@pytest.fixture(scope="module")
def sp_gemma(gemma_gguf):
    """The `sentencepiece` library running Gemma's model, rebuilt from the GGUF's raw fields.

    Two edits undo what the GGUF writer changed: user-defined pieces get their "▁" back (llama.cpp's
    converter spells them with spaces), and <unk> is typed UNKNOWN (the GGUF marks it control).
    """
    meta = read_gguf_metadata(gemma_gguf)
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    types = list(meta["tokenizer.ggml.token_type"])
    unk = meta["tokenizer.ggml.unknown_token_id"]
    types[unk] = 2
    pieces = [t.replace(" ", "\u2581") if ty == 4 else t for t, ty in zip(tokens, types)]
    proto = sp_model_proto(pieces, scores, types, unk_id=unk, byte_fallback=True, add_dummy_prefix=False)
    return spm.SentencePieceProcessor(model_proto=proto)


# ---------------------------------------------------------------------- Gemma 3 vs transformers
def test_metadata(gemma, hf_gemma):
    assert gemma.vocab_size == len(hf_gemma) == 262144
    assert (gemma.bos_id, gemma.eos_id, gemma.unk_id, gemma.pad_id) == (2, 1, 3, 0)
    assert (
        gemma.bos_token == hf_gemma.bos_token == "<bos>" and gemma.eos_token == hf_gemma.eos_token == "<eos>"
    )
    assert gemma.has_byte_fallback and not gemma.add_dummy_prefix and gemma.add_bos and not gemma.add_eos
    assert gemma.vocab[gemma.token_to_id("▁the")] == b" the"
    assert gemma.vocab[gemma.token_to_id("<0x0A>")] == b"\n"
    assert gemma.special_tokens["<start_of_turn>"] == 105 and gemma.special_tokens["\n"] == 107
    assert gemma.special_tokens["  "] == 138  # GGUF spells the whitespace-run pieces with spaces
    assert gemma.chat_template is None and hf_gemma.chat_template is None  # this GGUF ships none


def test_identical_to_transformers(gemma, hf_gemma, texts):
    assert len(texts) > 3000
    same = [t for t in texts if not LONG_SPACES.search(t)]
    want = hf_gemma(same, add_special_tokens=False)["input_ids"]
    for text, ids in zip(same, want):
        assert gemma.encode(text) == ids, repr(text[:80])
    want = hf_gemma(same, add_special_tokens=True)["input_ids"]
    for text, ids in zip(same, want):
        assert gemma.encode(text, add_special_tokens=True) == ids, repr(text[:80])
    assert gemma.encode_batch(same[:50]) == hf_gemma(same[:50], add_special_tokens=False)["input_ids"]


def test_identical_to_sentencepiece(gemma, sp_gemma, texts):
    """SentencePiece does not parse control tokens in text: compare with allow_special=False."""
    for text in texts + [" " * n + "x" for n in range(1, 100, 7)]:
        assert gemma.encode(text, allow_special=False) == sp_gemma.encode(text), repr(text[:80])


def test_long_space_runs(gemma, hf_gemma, sp_gemma):
    """≥ 32 spaces: transformers merges "▁▁" pieces pairwise, SentencePiece takes the longest piece first."""
    for n in (31, 32, 40, 63, 100, 5000):
        for text in (" " * n, "a" + " " * n + "b", "x\n" + " " * n):
            ours, hf = gemma.encode(text), hf_gemma(text, add_special_tokens=False)["input_ids"]
            assert ours == sp_gemma.encode(text)
            assert gemma.decode(ours) == hf_gemma.decode(hf) == text
            if n <= 31:
                assert ours == hf
    assert gemma.tokenize(" " * 40) == [" " * 31, " " * 9]
    assert hf_gemma.tokenize(" " * 40) == ["▁" * 16, "▁" * 24]  # transformers' conversion, for the record


def test_long_inputs_are_fast(gemma, hf_gemma):
    for text in ("a" * 5000, "ab" * 20000, "é" * 20000, "中" * 20000, "𓀀" * 5000, "b" * 100000):
        gemma._cache.clear()
        start = time.perf_counter()
        ids = gemma.encode(text)
        assert time.perf_counter() - start < 3.0, f"{len(text)} chars took too long"
        assert ids == hf_gemma(text, add_special_tokens=False)["input_ids"]


def test_heap_and_loop_agree(gemma, texts):
    """The simple loop (short words) and the heap (long words) are the same algorithm."""
    rng = random.Random(0)
    words = {w for t in texts[:400] for w in gemma._words(t.replace(" ", "\u2581"))}
    words |= {"".join(rng.choice("aeinst▁中") for _ in range(rng.randint(1, 40))) for _ in range(500)}
    for w in words:
        if len(w) <= 48:
            assert gemma._to_ids(gemma._bpe_heap(w)) == gemma._bpe(w), w


def test_decode(gemma, hf_gemma, texts):
    all_ids = hf_gemma(texts, add_special_tokens=True)["input_ids"]
    want = hf_gemma.batch_decode(all_ids, skip_special_tokens=False)
    want_skip = hf_gemma.batch_decode(all_ids, skip_special_tokens=True)
    for text, ids, w, ws in zip(texts, all_ids, want, want_skip):
        assert gemma.decode(ids) == w
        assert gemma.decode(ids, skip_special_tokens=True) == ws
        if not LONG_SPACES.search(text) and "\u2581" not in text:  # a literal "▁" comes back as " "
            assert gemma.decode(gemma.encode(text)) == text, repr(text[:80])


def test_decode_byte_runs_and_random_ids(gemma, hf_gemma):
    b = gemma.token_to_id
    cases = [
        [b("<0xE4>"), b("<0xB8>")],  # a cut-off character
        [b("<0xE4>"), b("<0xB8>"), b("<0xAD>"), b("<0xFF>")],  # a valid one, then a stray byte
        [b("<0xE4>"), 2, b("<0xB8>"), b("<0xAD>")],  # <bos> in the middle: skipping it joins the run
        [b("<0xF0>"), b("<0x9F>"), b("<0x98>"), b("<0x80>"), b("▁a")],
        [2, 105, b("▁hello"), 106, 107, 1],
        [],
    ]
    rng = random.Random(1)
    cases += [[rng.randrange(gemma.vocab_size) for _ in range(rng.randint(1, 30))] for _ in range(300)]
    cases += [[rng.randrange(238, 494) for _ in range(rng.randint(1, 12))] for _ in range(300)]  # bytes only
    for ids in cases:
        for skip in (False, True):
            assert gemma.decode(ids, skip_special_tokens=skip) == hf_gemma.decode(
                ids, skip_special_tokens=skip
            ), ids


def test_lone_surrogates_do_not_raise(gemma):
    ids = gemma.encode("a\ud800b\udfff")
    assert gemma.decode(ids) == "a\ufffdb\ufffd"


def test_allow_special(gemma, sp_gemma):
    text = "<start_of_turn>user\nhi<end_of_turn>"
    assert gemma.encode(text)[0] == 105
    plain = gemma.encode(text, allow_special=False)
    assert 105 not in plain and 106 not in plain and 107 in plain  # user-defined "\n" is still matched
    assert plain == sp_gemma.encode(text)


# ---------------------------------------------------------------------- chat template
# Gemma 3's chat template (google/gemma-3-4b-it tokenizer_config.json); this GGUF does not carry it.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "user", "content": "  Bonjour !  "},
        {"role": "assistant", "content": "Salut. 😀"},
        {"role": "user", "content": "Écris un haïku\nsur la mer."},
    ],
    [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Hi"},
    ],
]


def test_chat_template(gemma, hf_gemma):
    for messages in CONVERSATIONS:
        want = hf_gemma.apply_chat_template(
            messages, chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        got = gemma.apply_chat_template(messages, chat_template=GEMMA3_CHAT_TEMPLATE)
        assert got == want
        assert gemma.encode(got) == hf_gemma(want, add_special_tokens=False)["input_ids"]
        tokenized = gemma.apply_chat_template(messages, chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=True)
        assert tokenized == gemma.encode(want) and tokenized[:2] == [2, 105]


# ---------------------------------------------------------------------- tokenizer.json
def test_hf_json_from_transformers(gemma, hf_gemma, texts, tmp_path):
    """transformers' own tokenizer.json (merges, "▁▁" pieces respelled): we read it and agree everywhere."""
    path = tmp_path / "tokenizer.json"
    path.write_text(hf_gemma.backend_tokenizer.to_str(), encoding="utf-8")
    tok = SentencePieceTokenizer.from_hf_json(path)
    assert tok.add_bos and tok.bos_token == "<bos>" and not tok.add_dummy_prefix
    sample = texts[::4] + [" " * n + "x" for n in range(1, 80, 3)]
    want = hf_gemma(sample, add_special_tokens=True)["input_ids"]
    for text, ids in zip(sample, want):
        assert tok.encode(text, add_special_tokens=True) == ids, repr(text[:80])


def test_hf_json_export_round_trip(gemma, texts, tmp_path):
    path = tmp_path / "gemma" / "tokenizer.json"
    gemma.save_hf_json(path)
    ref = tokenizers.Tokenizer.from_file(str(path))
    back = load_sentencepiece(path.parent)
    assert (back.bos_id, back.eos_id, back.unk_id, back.add_bos) == (
        gemma.bos_id,
        gemma.eos_id,
        gemma.unk_id,
        True,
    )
    sample = texts[::6] + ["a" + " " * 40 + "b"]
    for text, enc in zip(sample, ref.encode_batch(sample, add_special_tokens=True)):
        ids = gemma.encode(text, add_special_tokens=True)
        assert ids == enc.ids, repr(text[:80])
        assert back.encode(text, add_special_tokens=True) == ids
        assert ref.decode(ids, skip_special_tokens=False) == gemma.decode(ids)


def test_dummy_prefix_against_tokenizers_and_sentencepiece(gemma_gguf, texts, tmp_path):
    """Llama 2 style: a "▁" in front of the text (Hugging Face: Prepend normalizer, Strip decoder).

    Llama 2 has no user-defined pieces, so this one is Gemma's vocabulary with its user-defined pieces
    made normal ones (whitespace runs spelled "▁▁", so many pieces have "▁" inside and words may not
    be cut at every "▁"), built by us, by `tokenizers` from our export, and by `sentencepiece`.

    Those pieces all score -1000. SentencePiece breaks ties between equal scores by position (leftmost),
    Hugging Face by the rank of the pair, which a merge list cannot make positional: runs of 32 or
    more equal characters (beyond the longest piece) come out differently, so `tokenizers` is compared
    on the other texts only; `sentencepiece` on all.
    """
    meta = read_gguf_metadata(gemma_gguf)
    types = [1 if t == 4 else t for t in meta["tokenizer.ggml.token_type"]]
    pieces = [t.replace(" ", "\u2581") for t in meta["tokenizer.ggml.tokens"]]
    scores = meta["tokenizer.ggml.scores"]
    tok = SentencePieceTokenizer(pieces, scores, types, unk_id=3, bos_id=2, eos_id=1, add_dummy_prefix=True)
    assert len(tok._bridges) > 30
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_hf_json(), encoding="utf-8")
    ref = tokenizers.Tokenizer.from_file(str(path))
    types[3] = 2
    proto = sp_model_proto(pieces, scores, types, unk_id=3, byte_fallback=True, add_dummy_prefix=True)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    sample = texts[::8] + [
        "<bos>x",
        "<start_of_turn>user\nhi<end_of_turn>\n",
        " x",
        "\nx",
        "<bos>\nx",
        "<bos> x",
    ]
    sample += ["a" + " " * n + "b" for n in range(1, 70, 3)]
    for text, enc in zip(sample, ref.encode_batch(sample, add_special_tokens=False)):
        ids = tok.encode(text)
        if not LONG_RUNS.search(text):
            assert ids == enc.ids, repr(text[:80])
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
        assert tok.encode(text, allow_special=False) == sp.encode(text), repr(text[:80])
    assert (
        tok.tokenize("Hello world") == ["\u2581Hello", "\u2581world"]
        and tok.decode(tok.encode("Hello")) == "Hello"
    )
    assert tok.encode("<bos>x") == [2, tok.token_to_id("\u2581x")]  # a prefix after each control token


# ---------------------------------------------------------------------- trained SentencePiece models
def _write_gguf(path, pieces, scores, types, **fields) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch=fields.pop("arch", "llama"))
    w.add_tokenizer_model(fields.pop("model", "llama"))
    w.add_token_list(pieces)
    if scores is not None:
        w.add_token_scores(scores)
    if types is not None:
        w.add_token_types(types)
    for key, value in fields.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _train(lines: list[str], **options) -> spm.SentencePieceProcessor:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=1500,
        user_defined_symbols=["<tab>", "\u2581\u2581", "ab"],
        control_symbols=["<ctl>"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
        **options,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _pieces(sp) -> tuple[list[str], list[float], list[int]]:
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    types = [
        2
        if sp.is_unknown(i)
        else 3
        if sp.is_control(i)
        else 6
        if sp.is_byte(i)
        else 5
        if sp.is_unused(i)
        else 4
        if p in ("<tab>", "\u2581\u2581", "ab")
        else 1
        for i, p in enumerate(pieces)
    ]
    return pieces, scores, types


@pytest.mark.parametrize("byte_fallback", [True, False])
@pytest.mark.parametrize("unused", [False, True])
def test_trained_models(data, tmp_path, byte_fallback, unused):
    """Models trained by the sentencepiece library (Llama 2 style: dummy prefix), as GGUF files.

    `unused` marks some learned pieces UNUSED: merges may still form them, and SentencePiece then
    writes them as the pair they came from. Without byte fallback, unknown characters become <unk>,
    runs of them one <unk>.
    """
    text = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    sp = _train(lines[:6000] + ["naïve café 中文 ab<tab>"], byte_fallback=byte_fallback)
    pieces, scores, types = _pieces(sp)
    if unused:
        rng = random.Random(2)
        for i in rng.sample([i for i, t in enumerate(types) if t == 1 and len(pieces[i]) > 1], 200):
            types[i] = 5
        proto = sp_model_proto(
            pieces, scores, types, unk_id=0, byte_fallback=byte_fallback, add_dummy_prefix=True
        )
        sp = spm.SentencePieceProcessor(model_proto=proto)
    path = tmp_path / "trained.gguf"
    _write_gguf(path, pieces, scores, types, unk_token_id=0, bos_token_id=1, eos_token_id=2)
    tok = load_sentencepiece(path)
    assert tok.add_dummy_prefix and tok.add_bos  # llama.cpp's defaults when the file does not say
    rng = random.Random(3)
    sample = lines[6000:9000] + EXTRA_CASES + [t for t in HARD_CASES if "\ud800" not in t]
    sample += ["".join(rng.choice("abet h\t中é") for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for line in sample:
        assert tok.encode(line, allow_special=False) == sp.encode(line), repr(line[:80])
        if byte_fallback and not unused:
            assert tok.decode(tok.encode(line, allow_special=False)) == sp.decode(sp.encode(line)), repr(
                line[:80]
            )


def test_load_tokenizer_dispatch(gemma_gguf, gemma):
    tok = load_tokenizer(gemma_gguf)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.encode("Hello world") == gemma.encode("Hello world")


# ---------------------------------------------------------------------- bad input
TINY = dict(pieces=["<unk>", "<s>", "a", "b", "ab"], scores=[0.0, 0.0, 0.0, 0.0, -1.0], types=[2, 3, 1, 1, 1])


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(model="gpt2"), "tokenizer.ggml.model"),
        (dict(scores=[0.0, 0.0]), "tokenizer.ggml.scores"),
        (dict(scores=None), "tokenizer.ggml.scores"),
        (dict(types=[1, 1]), "tokenizer.ggml.token_type"),
        (dict(bos_token_id=99), "tokenizer.ggml.bos_token_id"),
        (dict(types=[2, 3, 6, 1, 1]), "<0xNN>"),
        (dict(types=[1, 3, 1, 1, 1]), "unknown piece"),
        (dict(types=[2, 3, 9, 1, 1]), "unknown type"),
    ],
)
def test_bad_gguf(tmp_path, change, field):
    spec = {**TINY, **change}
    path = tmp_path / "bad.gguf"
    _write_gguf(path, spec.pop("pieces"), spec.pop("scores"), spec.pop("types"), **spec)
    with pytest.raises(ValueError, match=re.escape(field)) as e:
        SentencePieceTokenizer.from_gguf(path)
    assert str(path) in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer.from_gguf(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError):
        load_sentencepiece(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError):
        load_sentencepiece(tmp_path / "missing.model")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="junk.gguf"):
        load_sentencepiece(tmp_path / "junk.gguf")
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="junk.json"):
        load_sentencepiece(tmp_path / "junk.json")
    (tmp_path / "junk.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="junk.txt"):
        load_sentencepiece(tmp_path / "junk.txt")


def _hf(tmp_path, **change):
    data = {
        "added_tokens": [
            {
                "id": 0,
                "content": "<unk>",
                "special": True,
                "normalized": False,
                "lstrip": False,
                "rstrip": False,
                "single_word": False,
            }
        ],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": None,
        "model": {
            "type": "BPE",
            "vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3},
            "merges": ["a b"],
            "unk_token": "<unk>",
            "byte_fallback": False,
        },
    }
    for key, value in change.items():
        if key.startswith("model_"):
            data["model"][key[6:]] = value
        else:
            data[key] = value
    path = tmp_path / "tokenizer.json"
    import json

    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(model_type="WordPiece"), "model.type"),
        (dict(model_vocab=[]), "model.vocab"),
        (dict(model_merges=["a c"]), "model.merges"),
        (dict(normalizer={"type": "NFKC"}), "normalizer"),
        (dict(normalizer=None), "normalizer"),
        (
            dict(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"}),
            "prepend_scheme",
        ),
        (dict(pre_tokenizer={"type": "ByteLevel"}), "pre_tokenizer"),
        (dict(model_unk_token=None), "unknown piece"),
    ],
)
def test_bad_hf_json(tmp_path, change, field):
    path = _hf(tmp_path, **change)
    with pytest.raises(ValueError, match=re.escape(field)) as e:
        SentencePieceTokenizer.from_hf_json(path)
    assert str(path) in str(e.value)


def test_good_tiny_hf_json(tmp_path):
    tok = SentencePieceTokenizer.from_hf_json(_hf(tmp_path))
    ref = tokenizers.Tokenizer.from_file(str(_hf(tmp_path)))
    for text in ["ab ba", "abab", "xyz ab", "", "aab b"]:
        assert tok.encode(text) == ref.encode(text).ids, text


def test_bad_calls(gemma):
    with pytest.raises(TypeError):
        gemma.encode(b"bytes")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gemma.decode([10**9])
    with pytest.raises(ValueError, match="pieces"):
        SentencePieceTokenizer(["a", "b"], [0.0], [1, 1], unk_id=0)
