"""The OpenAI-compatible API, end to end: a real server (conftest.py) and the official `openai` client."""

from __future__ import annotations

import json
import threading

import httpx
import jsonschema
import openai
import pytest
import torch

from lmforge.serve.textstream import TextStream
from tests.serve.conftest import wait_idle

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60
    ) as c:
        yield c


@pytest.fixture(scope="module")
def greedy(client):
    """The greedy non-streaming answer to QUESTION (several tests compare with it)."""
    return client.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, temperature=0, max_tokens=30
    )


# ---- text streaming: stop strings and UTF-8 (no server needed) ----


class ByteTokenizer:
    """Each token id is one byte: lets a test split characters and stop strings anywhere."""

    def decode_bytes(self, ids):
        return bytes(ids)


def run_stream(text: bytes, stop=(), chunk: int = 1) -> tuple[list[str], str, bool]:
    ts = TextStream(ByteTokenizer(), stop)
    deltas = []
    for i in range(0, len(text), chunk):
        for b in text[i : i + chunk]:
            deltas.append(ts.push(b))
            if ts.stopped:
                break
        if ts.stopped:
            break
    deltas.append(ts.finish())
    return deltas, ts.output, ts.stopped


def test_textstream_utf8_and_hold_back():
    text = "Grüße 🤗 end".encode()
    deltas, out, stopped = run_stream(text)
    assert "".join(deltas) == out == "Grüße 🤗 end" and not stopped
    assert all("\ufffd" not in d for d in deltas)  # no half characters were sent
    # "STOP" spans several tokens: its first letters are held back, then dropped with it
    deltas, out, stopped = run_stream(b"abc STOP def", stop=["STOP"])
    assert out == "abc " and stopped and "".join(deltas) == "abc "
    assert not any("S" in d for d in deltas)
    # a held-back prefix that turns out not to be a stop string is released
    deltas, out, stopped = run_stream(b"ST STOP", stop=["STOP"])
    assert out == "ST " and stopped
    deltas, out, stopped = run_stream(b"the STO", stop=["STOP"])
    assert out == "the STO" and not stopped  # the end flushes what was held back
    # the earliest of several stop strings wins
    _, out, _ = run_stream(b"one, two. three", stop=[".", ","])
    assert out == "one"


# ---- chat and text completions ----


def test_chat_greedy(greedy):
    r = greedy
    assert "Paris" in r.choices[0].message.content
    assert (
        r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "smollm2-135m-instruct"
    )
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_greedy(client, greedy):
    stream = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            deltas.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert len([d for d in deltas if d]) > 3  # it really streamed, token by token
    assert "".join(deltas) == greedy.choices[0].message.content
    assert finish == "stop" and usage.completion_tokens == greedy.usage.completion_tokens


def test_completions_and_logprobs(client):
    r = client.completions.create(
        model="smollm2-135m-instruct",
        prompt="The capital of France is",
        max_tokens=6,
        temperature=0,
        logprobs=2,
    )
    c = r.choices[0]
    assert r.object == "text_completion" and "Paris" in c.text and c.finish_reason == "length"
    assert r.usage.completion_tokens == 6 == len(c.logprobs.tokens)
    assert "".join(c.logprobs.tokens) == c.text
    for tok, lp, top in zip(c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs):
        assert lp <= 0 and len(top) == 2
        assert max(top, key=top.get) == tok  # greedy: the chosen token is the most likely one
    echo = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=3, temperature=0, echo=True
    )
    assert echo.choices[0].text.startswith("The capital of France is Paris")


def test_chat_logprobs(client, greedy):
    r = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=30, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert r.choices[0].message.content == greedy.choices[0].message.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5 and t.logprob <= 0
        assert bytes(t.bytes).decode() == t.token


def test_n_with_seed_is_reproducible(client):
    kwargs = dict(model="smollm2", messages=QUESTION, temperature=1.0, max_tokens=8, n=2, seed=1234)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert 2 <= a.usage.completion_tokens <= 16  # both samples counted
    streamed = client.completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=8, n=2, temperature=1.0, seed=5, stream=True
    )
    texts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.text
    plain = client.completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=8, n=2, temperature=1.0, seed=5
    )
    assert texts == [c.text for c in plain.choices]


def test_stop_strings(client, greedy):
    full = greedy.choices[0].message.content
    assert full.startswith("The capital of France is Paris")
    r = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=30, stop=[" Paris", "zzz"]
    )
    assert r.choices[0].message.content == "The capital of France is" and r.choices[0].finish_reason == "stop"
    # a stop string that starts inside one token and ends in the next, while streaming
    stream = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=30, stop="is Pa", stream=True
    )
    deltas, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            deltas.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(deltas) == "The capital of France " and finish == "stop"
    assert not any("is" in d for d in deltas[-3:])


def test_json_schema_response_format(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="smollm2",
        temperature=0,
        max_tokens=60,
        messages=[{"role": "user", "content": "Give the largest city of France and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, schema)
    assert r.choices[0].finish_reason == "stop"
    obj = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_concurrent_requests(client, server, greedy):
    results, errors = [None] * 8, []
    steps_before = server.engine.stats["steps"]

    def ask(i: int) -> None:
        try:
            r = client.chat.completions.create(
                model="smollm2", messages=QUESTION, temperature=0, max_tokens=30
            )
            results[i] = r.choices[0].message.content
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all("Paris" in r for r in results)
    # batched: 8 answers of ~8 tokens took far fewer engine steps than 8 requests one after another
    assert server.engine.stats["steps"] - steps_before < 8 * greedy.usage.completion_tokens
    assert wait_idle(server)["running"] == 0


def test_cancelled_stream_frees_the_engine(client, server):
    before = server.engine.stats["tokens_generated"]
    stream = client.chat.completions.create(
        model="smollm2", messages=LONG, temperature=0, max_tokens=500, stream=True
    )
    got = 0
    for chunk in stream:
        got += sum(bool(c.delta.content) for c in chunk.choices)
        if got >= 3:
            break
    stream.close()
    stats = wait_idle(server)
    assert stats["running"] == 0 and stats["waiting"] == 0 and server.state.active == 0
    assert stats["free_blocks"] == stats["num_blocks"]
    assert stats["tokens_generated"] - before < 450  # stopped long before max_tokens
    # a non-streaming client that gives up: the server notices the closed connection and cancels too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/chat/completions",
            json={"messages": LONG, "max_tokens": 500},
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=httpx.Timeout(30, read=2),
        )
    before = server.engine.stats["tokens_generated"]
    stats = wait_idle(server)
    assert stats["running"] == 0 and server.state.active == 0
    assert stats["tokens_generated"] - before < 100
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in r.choices[0].message.content


def test_too_many_concurrent_is_503(client, server, http):
    state = server.state
    old = state.max_concurrent
    state.max_concurrent = 1
    try:
        stream = client.chat.completions.create(model="smollm2", messages=LONG, max_tokens=300, stream=True)
        next(iter(stream))
        r = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 5})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        stream.close()
    finally:
        state.max_concurrent = old
    wait_idle(server)
    assert http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2}).status_code == 200


# ---- errors ----


def test_auth(server):
    for key in ("wrong-key", ""):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=key or "x", max_retries=0)
        if not key:
            c = openai.OpenAI(
                base_url=server.url + "/v1", api_key="x", max_retries=0, default_headers={"Authorization": ""}
            )
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": QUESTION})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/health").status_code == 200  # open without a key
    assert httpx.get(server.url + "/").status_code == 200


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": QUESTION, "temperature": -1}, "temperature"),
        ({"messages": QUESTION, "top_p": 2}, "top_p"),
        ({"messages": QUESTION, "top_p": 0}, "top_p"),
        ({"messages": QUESTION, "n": 0}, "n"),
        ({"messages": QUESTION, "n": 100}, "n"),  # more than max_concurrent: could never run
        ({"messages": QUESTION, "max_tokens": "many"}, "max_tokens"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": QUESTION, "logit_bias": {"99999999": 5}}, "logit_bias"),
        ({}, "messages"),
    ],
)
def test_bad_values_are_400(http, body, param):
    assert error_of(http.post("/v1/chat/completions", json=body), 400)["param"] == param


def test_malformed_bodies(http, server):
    chat = "/v1/chat/completions"
    assert (
        "JSON"
        in error_of(http.post(chat, content=b"{not json", headers={"content-type": "application/json"}), 400)[
            "message"
        ]
    )
    assert "UTF-8" in error_of(http.post(chat, content=b'{"messages": "\xff\xfe"}'), 400)["message"]
    assert error_of(http.post(chat, content=b"[1, 2]"), 400)
    # 10 MB: refused from its Content-Length, never read whole
    assert error_of(http.post(chat, content=b"x" * 10_000_000), 413)["code"] == "request_too_large"
    # no Content-Length (chunked): the bytes are counted as they come
    chunks = (b"x" * 65536 for _ in range(40))
    assert error_of(http.post(chat, content=chunks), 413)
    # the prompt longer than the context window: the numbers are in the message
    long = [{"role": "user", "content": "hello " * 9000}]
    msg = error_of(http.post(chat, json={"messages": long}), 400)["message"]
    assert "8191" in msg and "tokens" in msg
    msg = error_of(http.post(chat, json={"messages": QUESTION, "max_tokens": 8180}), 400)["message"]
    assert "8192" in msg
    assert (
        error_of(http.post(chat, json={"model": "gpt-4o", "messages": QUESTION}), 404)["code"]
        == "model_not_found"
    )
    assert error_of(http.get("/v1/nothing-here"), 404)
    assert error_of(http.post("/v1/embeddings", json={"input": [[1, 2, 3]]}), 400)["param"] == "input"
    assert error_of(http.post("/v1/completions", json={"prompt": [999999]}), 400)["param"] == "prompt"
    # after all that, the server still answers
    assert http.post(chat, json={"messages": QUESTION, "max_tokens": 2}).status_code == 200
    assert server.state.active == 0


# ---- models, health, embeddings ----


def test_models_and_health(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert client.models.retrieve("smollm2").id == "smollm2-135m-instruct"
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["auth_required"] and health["context_length"] == 8192
    assert {"running", "waiting", "free_blocks"} <= set(health["engine"])


def test_embeddings(client, http):
    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    r = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the client asks for base64
    v = torch.tensor([d.embedding for d in r.data])
    assert v.shape == (3, 384) and torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-4)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert r.usage.prompt_tokens > 10
    plain = http.post(
        "/v1/embeddings", json={"model": "minilm", "input": texts[0], "encoding_format": "float"}
    )
    assert torch.allclose(torch.tensor(plain.json()["data"][0]["embedding"]), v[0], atol=1e-6)
