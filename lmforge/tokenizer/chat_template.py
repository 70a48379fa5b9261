"""Chat templates: turning a list of messages into the exact prompt string a chat model was trained on.

Every chat model fixes a format for turns (ChatML's `<|im_start|>user ... <|im_end|>`, Gemma's
`<start_of_turn>user ... <end_of_turn>`, ...). Model files ship that format as a Jinja2 template
(`tokenizer.chat_template` in GGUF, `chat_template` in Hugging Face's tokenizer_config.json); we render
it the way Hugging Face's `apply_chat_template` does: a *sandboxed* Jinja environment (templates come
from downloaded files and must not reach Python internals), `trim_blocks` and `lstrip_blocks`, and the
helpers templates expect (`raise_exception`, `strftime_now`, the `tojson` filter).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A template that does not parse, or that rejects the messages it was given."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    # Hugging Face overrides Jinja's tojson so that it does not HTML-escape (templates emit JSON for tools).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ChatTemplateError(f"chat template does not parse: {e}") from e


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    **context: Any,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a Jinja2 chat template."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ChatTemplateError(
            "messages must be a list of dicts, each with a 'role' (and usually 'content')"
        )
    try:
        return _compile(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **context
        )
    except ChatTemplateError:
        raise
    except TemplateError as e:
        raise ChatTemplateError(f"chat template failed to render: {e}") from e
