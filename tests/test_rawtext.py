"""The raw view: a candidate after the prompt's plain text, laid out as lm-evaluation-harness does."""

from __future__ import annotations

import pytest

from conftest import make_backbone
from prefheads import tasks
from prefheads.eval.lmeval import encode_examples
from prefheads.rawtext import encode_raw, raw_context


def test_for_an_lm_eval_question_the_raw_view_is_the_harness_request():
    _, tok = make_backbone("llama")
    exs = list(tasks.load_examples("openbookqa", split="eval", data_dir="bundled", limit=5, variant="lm-eval"))
    want, _ = encode_examples(tok, exs)
    got = [encode_raw(tok, ex.prompt, c) for ex in exs for c in ex.choices]
    assert [(g.ids, g.prompt_len) for g in got] == [(w.ids, w.prompt_len) for w in want]
    assert [g.n_chars for g in got] == [len(c) for ex in exs for c in ex.choices]


def test_a_conversation_is_rendered_plain_and_a_long_one_keeps_its_end():
    _, tok = make_backbone("llama")
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and you?"}]
    assert raw_context(convo) == "Be brief.\n\nUser: hi\n\nAssistant: hello\n\nUser: and you?\n\nAssistant:"
    assert raw_context("just a question") == "just a question"
    full = encode_raw(tok, "word " * 50, "the answer")
    cut = encode_raw(tok, "word " * 50, "the answer", max_length=20)
    assert len(cut.ids) == 20 and cut.ids == full.ids[-20:] and cut.truncated == len(full.ids) - 20
    with pytest.raises(ValueError, match="answer alone"):
        encode_raw(tok, "q", "a long answer " * 20, max_length=8)
