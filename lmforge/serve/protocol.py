"""The request bodies of OpenAI's API (chat completions, completions, embeddings) as pydantic models.

Field names, ranges and defaults follow https://platform.openai.com/docs/api-reference. Unknown fields
are ignored (clients send vendor extensions), except those whose silent omission would give a wrong
answer (`tools`, `suffix`), which are refused in the app. A few common extensions beyond OpenAI's API are
accepted, as vLLM does: `top_k`, `min_p`, `repetition_penalty`.

Errors leave the server as OpenAI does: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """An error the client caused (or a limit it hit), sent back as OpenAI's error JSON."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
             503: "server_overloaded", 500: "server_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A 400: the request is well-formed but a value is not acceptable."""
    return APIError(400, message, param, code)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None  # {"name": ..., "schema": {...}, "strict": ...}


class _Sampling(_Request):
    """The options chat and text completions share."""

    model: str | None = None  # None: the served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Extensions (vLLM's names): 0 / 0.0 / 1.0 are "off".
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids (integers as strings), got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias} for token {key}")
        return v


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message as plain text: text parts joined; other parts (images, audio) are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"only text content parts are supported, got a {part.type!r} part")
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(union_mode="left_to_right")
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    response_format: ResponseFormat | None = None  # an extension: constrained text completions


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] = Field(union_mode="left_to_right")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


T = TypeVar("T", bound=BaseModel)


def validation_error(e: ValidationError) -> APIError:
    """Pydantic's first complaint as an OpenAI 400 that names the parameter ("messages.0.role")."""
    err = e.errors(include_url=False)[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return invalid(f"missing required parameter '{param}'", param, "missing_required_parameter")
    got = json.dumps(err.get("input"), default=str)
    got = got if len(got) <= 80 else got[:77] + "..."
    return invalid(f"invalid value for '{param}': {msg} (got {got})", param)


def parse_body(raw: bytes, cls: type[T]) -> T:
    """A request body (bytes) as a pydantic model; every way it can be wrong is a 400 that says which."""
    if not raw:
        raise invalid("the request body is empty: expected a JSON object", code=None)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(
            f"the request body is not valid UTF-8 (bad byte at position {e.start})", code=None
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise invalid(f"the request body is not valid JSON: {e}", code=None) from None
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, got {type(data).__name__}", code=None)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
