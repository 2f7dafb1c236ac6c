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


def test_a_large_prompt_group_is_split_to_the_forward_budget():
    # 40 answers to one 20-token prompt: one group, split into pieces whose prefix plus padded
    # answers fit max_tokens and max_batch, the shortest answers together
    items = [enc(20, 1 + k % 13) for k in range(40)]
    pieces = engine._prompt_groups(items, max_tokens=100, max_batch=8)
    assert sorted(i for _, m in pieces for i in m) == list(range(40))
    for key, members in pieces:
        assert len(key) == 20 and 1 <= len(members) <= 8
        assert 20 + len(members) * max(len(items[i].ids) - 20 for i in members) <= 100
    assert len(engine._prompt_groups(items)) == 1  # unbounded: the plain grouping
    # an answer longer than the budget still gets a piece of its own
    assert [m for _, m in engine._prompt_groups([enc(20, 200), enc(20, 2)], max_tokens=100)] == [[1], [0]]


def test_many_answers_to_one_prompt_run_in_bounded_forwards(monkeypatch):
    pm = tiny_pm()
    pm.add_head("h", "identity", init_std=0.5)
    comps = [f"answer {k} " + "x" * (k % 17) for k in range(120)]
    ref = pm.features(["Which one?"] * len(comps), comps, layers=[-1], logprobs=True, shared_prefix=False)
    seen: list[int] = []
    dec = engine._decoder(pm.backbone)
    hook = dec.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True)
    monkeypatch.setattr(pm, "max_tokens", 256)
    try:
        got = pm.features(["Which one?"] * len(comps), comps, layers=[-1], logprobs=True, shared_prefix=True)
    finally:
        hook.remove()
    assert len(seen) > 2 and max(seen) <= 256  # before: one prefix forward, then all 120 answers at once
    assert torch.allclose(got.states[-1], ref.states[-1], atol=1e-4)
    assert torch.allclose(got.logprob_sum, ref.logprob_sum, atol=1e-3) and torch.equal(got.n_tokens, ref.n_tokens)
