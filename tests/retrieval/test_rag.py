"""Chunking, grounded prompts, citations, groundedness, refusal, and the index/search/rag CLI end to end."""

from __future__ import annotations

import json

import pytest

from lmforge import load_model
from lmforge.cli import main
from lmforge.retrieval.rag import (
    RAG,
    REFUSAL,
    build_prompt,
    chunk_paragraphs,
    chunk_tokens,
    citations,
    lexical_support,
    sentences,
)
from lmforge.retrieval.search import SearchIndex, read_documents

DOCS = [
    {
        "id": "paris",
        "text": "Paris is the capital and largest city of France. It lies on the Seine.",
        "lang": "en",
    },
    {
        "id": "photo",
        "text": "Photosynthesis turns light, water and carbon dioxide into sugar in plant leaves.",
        "lang": "en",
    },
    {"id": "berlin", "text": "Berlin ist die Hauptstadt Deutschlands und liegt an der Spree.", "lang": "de"},
]


def test_chunk_tokens_are_exact_overlapping_substrings():
    text = " ".join(f"w{i}" for i in range(103))
    chunks = chunk_tokens(text, size=20, overlap=5)
    assert all(c in text for c in chunks)
    words = [c.split() for c in chunks]
    assert all(len(w) <= 20 for w in words)
    assert all(a[-5:] == b[:5] for a, b in zip(words, words[1:]))  # each chunk repeats the last 5 words
    assert words[0][0] == "w0" and words[-1][-1] == "w102"
    # counted in a tokenizer's tokens: a 3-token word takes 3 of the 20
    heavy = chunk_tokens("aaa b c d e f g h", size=4, overlap=0, count=lambda w: len(w))
    assert heavy == ["aaa b", "c d e f", "g h"]
    assert chunk_tokens("   ", 10, 2) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_tokens("a b", 4, 4)


def test_paragraphs_sentences_citations_and_support():
    text = "First para.\n\nSecond para is here.\n\n\n" + "Long sentence number one. " * 10
    chunks = chunk_paragraphs(text, max_chars=60)
    assert chunks[0] == "First para.\n\nSecond para is here." and all(len(c) <= 60 for c in chunks)
    assert sentences("Paris is big [1]. It is in France. 3 rivers!") == [
        "Paris is big [1].",
        "It is in France.",
        "3 rivers!",
    ]
    assert citations("Paris [1]. Also [3, 2] and [9].", 3) == [1, 3, 2]
    msgs = build_prompt("Where?", ["A", "B"])
    assert msgs[0]["role"] == "system" and "[1] A\n\n[2] B" in msgs[1]["content"]
    assert lexical_support("Paris is the capital of France [1].", DOCS[0]["text"])
    assert not lexical_support("Berlin is the capital of Germany.", DOCS[0]["text"])


@pytest.fixture(scope="module")
def index():
    return SearchIndex("all-minilm-l6-v2").add(
        [{**d, "meta": {"lang": d["lang"]}} for d in DOCS], progress=False
    )


def test_search_index_modes_filters_and_persistence(index, tmp_path):
    for mode in ("bm25", "dense", "hybrid"):
        assert index.search("capital of France", 3, mode)[0][0] == "paris"
    assert [d for d, _ in index.search("capital", 3, "hybrid", where={"lang": ["de"]})] == ["berlin"]
    back = SearchIndex.load(index.save(tmp_path / "idx"))
    assert back.search("sugar from light", 1, "dense") == index.search("sugar from light", 1, "dense")
    with pytest.raises(ValueError, match="duplicate document id 'paris'"):
        back.add([{"id": "paris", "text": "again"}], progress=False)
    (tmp_path / "idx" / "index.json").write_text("{oops")
    with pytest.raises(ValueError, match="index.json is corrupt"):
        SearchIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match="no dense vectors"):
        SearchIndex(None).add(DOCS, progress=False).search("x", mode="dense")


def test_rag_answers_with_citations_and_refuses_without_evidence(index, smollm2_gguf):
    model = load_model(smollm2_gguf)
    rag = RAG(
        lambda q, k: index.search(q, k, "dense"), index.texts(), model, k=2, min_score=0.3, max_tokens=40
    )
    ans = rag.answer("What is the capital of France?")
    assert not ans.refused and ans.sources[0][0] == "paris"
    assert "Paris" in ans.text
    g = rag.groundedness(ans)
    assert 0.0 <= g["lexical"] <= 1.0
    off = rag.answer("Who won the 1954 football world cup final?")
    assert off.refused and off.text == REFUSAL and off.sources == []
    with pytest.raises(ValueError, match="empty"):
        rag.answer("  ")


def test_cli_index_search_rag_and_eval(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in DOCS[:2]) + "\n")
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(DOCS[2]) + "\n" + "not json\n")
    idx = str(tmp_path / "idx")
    main(["index", "build", idx, "--docs", str(docs)])
    with pytest.raises(SystemExit, match="more.jsonl:2"):
        main(["index", "add", idx, "--docs", str(more)])
    main(["index", "add", idx, "--docs", str(more), "--on-bad-row", "skip"])
    main(["search", idx, "Hauptstadt Spree", "--mode", "bm25"])
    out = capsys.readouterr().out
    assert "skipped 1 malformed" in out and "berlin" in out.splitlines()[-1]
    main(["search", idx, "plants making sugar", "--filter", "lang=en", "-k", "1"])
    assert "photo" in capsys.readouterr().out
    main(["index", "delete", idx, "photo"])
    with pytest.raises(SystemExit, match="no document with id 'photo'"):
        main(["index", "delete", idx, "photo"])
    main(["index", "map", idx, "--k", "2", "--png", str(tmp_path / "map.png"), "--cosine", "0.1"])
    out = capsys.readouterr().out
    assert "silhouette" in out and (tmp_path / "map.png").is_file()
    assert "near-duplicate meaning" in out  # at cosine 0.1 the two remaining documents count as one topic
    main(["search", idx, "the of", "--mode", "bm25"])
    assert "no document matches" in capsys.readouterr().out
    (tmp_path / "qrels").write_text("1 0 a 1\n2 0 b 2\n")
    (tmp_path / "run1").write_text("1 Q0 a 1 2.0 x\n2 Q0 c 1 1.0 x\n")
    (tmp_path / "run2").write_text("1 Q0 a 1 2.0 y\n2 Q0 b 1 1.0 y\n")
    main(
        [
            "retrieval",
            "eval",
            str(tmp_path / "run1"),
            str(tmp_path / "run2"),
            "--qrels",
            str(tmp_path / "qrels"),
        ]
    )
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["run"].split("|")[2].strip() == "ndcg@10"
    assert float(rows[str(tmp_path / "run1")].split("|")[2]) == pytest.approx(0.5)  # q2 misses b
    assert float(rows[str(tmp_path / "run2")].split("|")[2]) == pytest.approx(1.0)
    assert "run2 vs" in out and "p = " in out


def test_read_documents_from_a_folder(tmp_path):
    (tmp_path / "a.md").write_text("One paragraph.\n\nAnother one.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Text in a subfolder.")
    docs = read_documents(tmp_path)
    assert [d["id"] for d in docs] == ["a.md#0", "sub/b.txt#0"] and docs[1]["meta"] == {"source": "sub/b.txt"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt or .md"):
        read_documents(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="documents not found"):
        read_documents(tmp_path / "missing.jsonl")
