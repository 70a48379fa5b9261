"""Thousands of connections at once: every one is answered, and the server keeps serving chat afterwards."""

from __future__ import annotations

import asyncio
import resource

import httpx

from tests.serve.conftest import API_KEY

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _room_for(n: int) -> int:
    """As many connections as the open-file limit allows (each costs a client and a server socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 256 and (hard == resource.RLIM_INFINITY or hard > soft):
        soft = 2 * n + 256 if hard == resource.RLIM_INFINITY else min(hard, 2 * n + 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return min(n, (soft - 256) // 2)


def test_two_thousand_concurrent_connections(server):
    n = _room_for(2000)
    assert n >= 400, f"the open-file limit leaves room for only {n} connections"
    host, port = server.url.removeprefix("http://").split(":")

    async def one(i: int) -> int:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = (await asyncio.wait_for(reader.readline(), 60)).split()
            return int(status[1])
        finally:
            writer.close()

    async def all_at_once() -> list:
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(all_at_once(), 120))
    errors = [r for r in results if not isinstance(r, int)]
    assert not errors, f"{len(errors)} of {n} connections failed, e.g. {errors[0]!r}"
    assert results == [200] * n
    r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"messages": QUESTION, "max_tokens": 8, "temperature": 0}, timeout=60)  # fmt: skip
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
