"""The ASGI middleware in front of every request: the API key and the request-size limit.

Both checks run before any route reads the body. A body's size is checked twice: the Content-Length
header is refused at once when it is over the limit, and the bytes actually received are counted (a
chunked body has no Content-Length, and a header can lie), so a 10 MB body is never held in memory. The
unread rest of a refused body is read and thrown away (up to a cap) before the answer goes out: a client
that is still sending would otherwise see a broken connection instead of the 413.
"""

from __future__ import annotations

import hmac
import json

from lmforge.serve.protocol import APIError

DRAIN_LIMIT = 64 * 1024 * 1024  # read and drop at most this much of a refused body, then close


class BodyTooLarge(APIError):
    def __init__(self, limit: int, size: int | None = None):
        got = f"{size} bytes" if size is not None else "more than that"
        super().__init__(
            413, f"the request body is too large: at most {limit} bytes, got {got}", code="request_too_large"
        )


async def send_error(send, error: APIError, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def drain(receive, limit: int = DRAIN_LIMIT) -> None:
    """Read and drop the rest of the request body (at most `limit` bytes)."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class Guard:
    """Pure ASGI middleware: bearer-token auth for /v1/ routes and the body-size limit for all routes."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # lower-case byte names
        if self.api_key is not None and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            error = self._auth_error(headers.get(b"authorization", b"").decode("latin-1"))
            if error is not None:
                await drain(receive)
                return await send_error(send, error, [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return await send_error(send, APIError(400, f"invalid Content-Length header {length!r}"))
            if size > self.max_body_bytes:
                await drain(receive)
                return await send_error(send, BodyTooLarge(self.max_body_bytes, size))

        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if message.get("more_body", False):
                        await drain(receive)
                    raise BodyTooLarge(self.max_body_bytes)  # the app's handler turns it into a 413
            return message

        await self.app(scope, counted_receive, send)

    def _auth_error(self, header: str) -> APIError | None:
        scheme, _, token = header.partition(" ")
        if not header:
            return APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                code="missing_api_key",
            )
        # compare_digest: the time taken does not tell an attacker how much of the key was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            return APIError(401, "incorrect API key provided", code="invalid_api_key")
        return None
