"""Chat templates render in a sandbox and fail with clear errors."""

from __future__ import annotations

import pytest

from lmforge.tokenizer.chat_template import ChatTemplateError, render_chat_template

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_renders_chatml():
    out = render_chat_template(CHATML, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_sandbox_blocks_python_internals():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render_chat_template(evil, [{"role": "user", "content": "x"}])


def test_raise_exception_and_syntax_errors():
    strict = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="first message must be user"):
        render_chat_template(strict, [{"role": "assistant", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        render_chat_template(CHATML, "hello")  # type: ignore[arg-type]


def test_tojson_does_not_html_escape():
    out = render_chat_template("{{ messages[0] | tojson }}", [{"role": "user", "content": "<b>&</b>"}])
    assert out == '{"role": "user", "content": "<b>&</b>"}'
