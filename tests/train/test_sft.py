"""SFT: assistant-only labels from the model's own chat template, checked token by token, and packing."""

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import load_tokenizer
from lmforge.train.pretrain import packed_batch
from lmforge.train.sft import IGNORE, SFTExample, SFTLoader, chat_segments, mix, text_example, tokenize_chat
from lmforge.train.trainer import lm_loss

CONVERSATION = [
    {"role": "system", "content": "You are Forge, a helpful assistant."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Forge, built by the lmforge team."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
]


@pytest.fixture(scope="module")
def smollm_tok(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


# Gemma's turn layout (the 270M GGUF is the base model and carries no template); the assistant's role is
# named "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def gemma_tok(gemma_gguf):
    tok = load_tokenizer(gemma_gguf)
    assert tok.chat_template is None
    tok.chat_template = GEMMA_TEMPLATE
    return tok


def runs(labels: list[int]) -> list[list[int]]:
    """The maximal runs of trained labels."""
    out, cur = [], []
    for lab in labels:
        if lab == IGNORE:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(lab)
    return out + ([cur] if cur else [])


@pytest.mark.parametrize("which, end", [("smollm_tok", "<|im_end|>"), ("gemma_tok", "<end_of_turn>")])
def test_only_the_assistant_turns_are_trained_token_by_token(which, end, request):
    tok = request.getfixturevalue(which)
    ex = tokenize_chat(tok, CONVERSATION)
    # the ids are the whole rendering of the conversation, nothing lost or added
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    # each trained run is one assistant turn and its end marker, exactly
    turns = [tok.decode(r) for r in runs(ex.labels)]
    assert turns == [m["content"] + end for m in CONVERSATION if m["role"] == "assistant"]
    # a trained label is its own token; every other token (system, user, role headers) is ignored
    for i, lab in zip(ex.input_ids, ex.labels):
        assert lab in (i, IGNORE)
    untrained = tok.decode([i for i, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE])
    assert "Who are you?" in untrained and "You are Forge" in untrained and "I am Forge" not in untrained


def test_smollm2_default_system_prompt_stays_untrained(smollm_tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    pieces = chat_segments(smollm_tok, msgs)
    assert [t for t, trained in pieces if trained] == ["Hello!<|im_end|>"]
    assert "SmolLM" in pieces[0][0] and not pieces[0][1]  # the template's own system prompt is context


def test_a_conversation_without_an_assistant_turn_is_refused(smollm_tok):
    with pytest.raises(ValueError, match="no assistant turn"):
        tokenize_chat(smollm_tok, [{"role": "user", "content": "Hi"}])


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_fix(smollm_tok):
    # renders only the last message: a prefix's rendering is not a prefix of the whole
    last_only = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>>{% endif %}"
    with pytest.raises(ValueError, match="cannot mark assistant tokens.*chat_template"):
        tokenize_chat(smollm_tok, CONVERSATION, chat_template=last_only)


def example(n: int, start: int, trained_from: int) -> SFTExample:
    ids = list(range(start, start + n))
    return SFTExample(ids, [IGNORE] * trained_from + ids[trained_from:])


def test_packing_keeps_examples_apart():
    examples = [example(5, 10, 2), example(7, 20, 3), example(4, 40, 1), example(9, 50, 4)]
    loader = SFTLoader(examples, batch_size=2, seq_len=12, seed=0)
    x, y, seg, pos = loader.next_batch()
    assert x.shape == y.shape == seg.shape == pos.shape == (2, 12)
    assert (seg.max(dim=1).values >= 1).any()  # at least one row holds two examples
    for b in range(2):
        for t in range(12):
            if seg[b, t] < 0:
                assert y[b, t] == IGNORE  # padding is never a target
                continue
            # positions restart at each example
            assert pos[b, t] == (0 if t == 0 or seg[b, t - 1] != seg[b, t] else pos[b, t - 1] + 1)
            if y[b, t] != IGNORE:  # a target is the next token of the same example, and a trained one
                e = next(e for e in examples if int(x[b, t]) in e.input_ids)
                j = e.input_ids.index(int(x[b, t]))
                assert int(y[b, t]) == e.labels[j + 1] == e.input_ids[j + 1]
    # one epoch (25 tokens, best fit 9+4 and 7+5) fills the two rows: every trained target is there once
    # (a label on an example's first token would have no predecessor; none here is trained)
    assert int((y != IGNORE).sum()) == sum(e.trained for e in examples)


def test_unpacked_rows_hold_one_example_and_resume_is_exact():
    examples = [example(3 + i % 5, 100 * i, 1) for i in range(1, 11)]
    a = SFTLoader(examples, batch_size=3, seq_len=8, seed=3, pack=False)
    x, _, seg, _ = a.next_batch()
    assert int(seg.max()) == 0
    a = SFTLoader(examples, batch_size=3, seq_len=8, seed=3)
    a.next_batch()
    state = a.state_dict()
    want = [a.next_batch() for _ in range(4)]  # crosses an epoch
    b = SFTLoader(examples, batch_size=3, seq_len=8, seed=3)
    b.load_state_dict(state)
    for w, g in zip(want, (b.next_batch() for _ in range(4))):
        assert all(torch.equal(p, q) for p, q in zip(w, g))


def test_a_packed_batch_has_the_loss_of_its_examples_alone():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=128, ffn_dim=96,
                                    family="llama", max_seq_len=32)).eval()  # fmt: skip
    examples = [example(6, 3, 2), example(9, 20, 4), example(5, 60, 1)]
    packed = SFTLoader(examples, batch_size=1, seq_len=20, seed=0)
    batch = packed_batch(*packed.next_batch())
    assert int(batch["segment_ids"].max()) == 2  # all three share the row
    alone_sum, n = 0.0, 0
    for e in examples:
        one = packed_batch(*SFTLoader([e], batch_size=1, seq_len=len(e) - 1, seed=0).next_batch())
        k = int((one["labels"] != IGNORE).sum())
        with torch.no_grad():
            alone_sum += float(lm_loss(model, one)) * k
        n += k
    with torch.no_grad():
        assert float(lm_loss(model, batch)) == pytest.approx(alone_sum / n, abs=1e-5)


def test_an_example_with_nothing_trained_is_dropped_and_all_untrained_is_an_error():
    untrained, trained = SFTExample([1, 2, 3], [IGNORE] * 3), SFTExample([4, 5, 6], [IGNORE, 5, 6])
    assert SFTLoader([untrained, trained], 1, 4).examples == [trained]
    with pytest.raises(ValueError, match="no example has a trained token"):
        SFTLoader([untrained], 1, 4)


def test_mixing_pretraining_text(smollm_tok):
    chat = [tokenize_chat(smollm_tok, CONVERSATION)] * 6
    texts = [text_example(smollm_tok, f"Plain text number {i}.") for i in range(10)]
    assert texts[0].labels == texts[0].input_ids and texts[0].input_ids[-1] == smollm_tok.eos_id
    mixed = mix(chat, texts, 0.25)
    assert len(mixed) == 8 and sum(e in texts for e in mixed) == 2
    with pytest.raises(ValueError, match="needs 54 extra"):
        mix(chat, texts, 0.9)
