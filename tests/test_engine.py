"""The engine's per-call choice between shared-prefix and full encoding (``shared_prefix="auto"``)."""

from __future__ import annotations

import pytest
import torch

from prefheads import engine
from prefheads.chat import Encoded
from test_evaluation import tiny_pm

LONG = "Read the passage and answer. " + "The quick brown fox jumps over the lazy dog. " * 12


def enc(prompt_len: int, completion_len: int, prompt_id: int = 7) -> Encoded:
    return Encoded([prompt_id] * prompt_len + [9] * completion_len, prompt_len)


def test_plan_counts_the_padded_tokens_of_each_strategy():
    items = [enc(10, 2), enc(10, 4)]
    # full: one bucket of two rows padded to 14; shared: one 10-token prompt, two answers padded to 4
    assert engine.plan_tokens(items) == (2 * 14, 10 + 2 * 4)
    distinct = [enc(10, 2, prompt_id=1), enc(10, 2, prompt_id=2)]
    full, shared = engine.plan_tokens(distinct)
    assert full == 24 and shared == 2 * 10 + 2 * 2  # nothing shared: the same tokens, two forwards


@pytest.mark.parametrize("items, want", [
    ([enc(200, 5)] * 6, True),                                   # long prompt, many short answers
    ([enc(20, 150), enc(20, 140)], False),                       # short prompt, long answers
    ([enc(50, 5, prompt_id=k) for k in range(8)], False),        # no prompt is shared
])
def test_auto_picks_shared_prefix_only_where_it_saves_enough(items, want):
    assert engine.choose_shared_prefix(items) is want


def test_margin_decides_the_close_cases():
    items = [enc(30, 20)] * 2  # full 100 tokens, shared 70: a 1.43 ratio
    assert engine.choose_shared_prefix(items, margin=1.2)
    assert not engine.choose_shared_prefix(items, margin=1.6)


@pytest.mark.parametrize("prompts, comps, path", [
    ([LONG] * 5, ["A.", "B. yes", "C", "D. no", "E"], "shared"),
    (["Hi?", "Hi?"], ["Paris " * 60, "London is the capital of France " * 8], "full"),
])
def test_auto_runs_the_chosen_path_and_equals_both(monkeypatch, prompts, comps, path):
    pm = tiny_pm()
    pm.add_head("h", "swiglu", init_std=0.5)
    ref = {sp: pm.score(prompts, comps, shared_prefix=sp) for sp in (True, False)}
    ran = []
    for name in ("_extract_shared", "_extract_full"):
        real = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _real=real, _name=name: ran.append(_name) or _real(*a))
    got = pm.score(prompts, comps, shared_prefix="auto")
    assert ran == [f"_extract_{path}"]
    for sp in (True, False):
        assert torch.allclose(got, ref[sp], atol=1e-4)


def test_extract_refuses_an_unknown_choice():
    pm = tiny_pm()
    pm.add_head("h", "identity")
    with pytest.raises(ValueError, match="shared_prefix must be"):
        pm.score("q", ["a"], shared_prefix="sometimes")
