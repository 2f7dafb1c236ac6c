"""Stacked training of ``--layer auto``'s candidate heads: the same heads as one run per head.

Tolerance: every weight of every stacked head lies within ``RTOL`` of the same head trained alone,
relative to the largest entry of its tensor (measured: at most ~1.5e-6 on these cases; the
difference is float rounding in batched vs one-head matrix products). The unit cases start the
heads at ``init_std=0.5``: at the default 0.02 on widths this small a SwiGLU head's output bias
sits where tanh is flat and its gradient is a near-total cancellation, so that weight moves with
rounding noise alone (a one-ulp nudge of the initial weights moves it ~10 % in a one-head run too).
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.heads import HeadConfig, RewardHead
from prefheads.losses import LOSSES
from prefheads.training import FitConfig, fit
from prefheads.training.config import FitConfig as Cfg
from prefheads.training.data import choice_share, from_examples
from prefheads.training.loop import train
from prefheads.training.stacked import (Candidate, HeadStack, choice_hits, clip_grad_norms_, padded_groups,
                                        stack_blocker, train_stacked)
from prefheads.training.strategies import FrozenTrainable
from test_lmscore_heads import _examples

RTOL = 1e-5
LAYERS = (0, 1, 2)


def _features(n_groups: int = 40, d: int = 8, seed: int = 0):
    """``({layer: [M, d]}, [M] scores, groups)``: 3 or 4 candidates per group, the preferred row
    shifted along one direction more strongly in deeper layers, plus a constant offset."""
    g = torch.Generator().manual_seed(seed)
    groups, m = [], 0
    for i in range(n_groups):
        k = 3 + i % 2
        groups.append((m + i % k, [m + j for j in range(k) if j != i % k]))
        m += k
    pref = torch.zeros(m)
    pref[[w for w, _ in groups]] = 1.0
    direction = torch.randn(d, generator=g)
    states = {l: torch.randn(m, d, generator=g) + 0.4 * (l + 1) * pref[:, None] * direction + 3.0 for l in LAYERS}
    return states, torch.randn(m, generator=g) + 0.5 * pref, groups


def _head(pooler: str, layer: int, score: str | None, d: int = 8) -> RewardHead:
    torch.manual_seed(0)  # as fit seeds every candidate head
    kw = {"ffn_dim": 6} if pooler == "swiglu" else {}
    return RewardHead(HeadConfig(pooler=pooler, hidden_size=d, layer=layer, dropout=0.0, pooler_kwargs=kw,
                                 score_input=score, init_std=0.5))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference of any tensor, relative to its tensor's largest entry."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)


@pytest.mark.parametrize("objective", LOSSES.names())
@pytest.mark.parametrize("score", [None, "logprob_mean"])
@pytest.mark.parametrize("pooler", ["identity", "swiglu"])
def test_each_stacked_head_equals_its_own_run(tmp_path, pooler, score, objective):
    states, scores, groups = _features()
    tr, va = groups[:30], groups[30:]  # 30 groups in batches of 8: a short last batch
    cfg = Cfg(data="x.jsonl", epochs=4, batch_size=8, lr=1e-2, objective=objective, pooler=pooler, layer="auto",
              lm_score=score or "none")
    alone = {}
    for l in LAYERS:
        head = _head(pooler, l, score)
        pm = types.SimpleNamespace(heads={"h": head}, backbone=nn.Linear(1, 1))
        trainable = FrozenTrainable(pm, "h", None, cfg, states=states, scores=scores if score else None)
        trainable.setup()
        alone[l] = (head, *train(trainable, tr, va, cfg, tmp_path / str(l)))
    heads = {l: _head(pooler, l, score) for l in LAYERS}
    out = train_stacked([Candidate(heads[l], states[l], scores if score else None) for l in LAYERS], tr, va, cfg,
                        [tmp_path / f"s{l}" for l in LAYERS])
    for l, (history, best_epoch) in zip(LAYERS, out):
        head, h1, e1 = alone[l]
        assert _close(head.state_dict(), heads[l].state_dict()) <= RTOL, l
        assert best_epoch == e1
        assert [r["epoch"] for r in history] == [r["epoch"] for r in h1]
        for r1, r2 in zip(h1, history):
            assert r2["val_accuracy"] == r1["val_accuracy"]
            for k in ("loss", "pair_accuracy", "margin", "val_pair_accuracy"):
                assert r2[k] == pytest.approx(r1[k], rel=RTOL, abs=1e-6), (k, r1["epoch"])
        assert json.loads((tmp_path / f"s{l}" / "history.json").read_text()) == history


def test_per_head_clipping_is_each_heads_own_clip():
    torch.manual_seed(1)
    scale = torch.tensor([0.01, 1.0, 10.0])  # head 0 under the clip, heads 1 and 2 over it
    grads = [torch.randn(3, 5, 4) * scale.view(3, 1, 1), torch.randn(3, 7) * scale.view(3, 1)]
    alone = [[g[i].clone() for g in grads] for i in range(3)]
    norms = clip_grad_norms_(grads, 1.0)
    for i, gs in enumerate(alone):
        ps = [nn.Parameter(torch.zeros_like(g)) for g in gs]
        for p, g in zip(ps, gs):
            p.grad = g
        total = torch.nn.utils.clip_grad_norm_(ps, 1.0)
        assert norms[i] == pytest.approx(float(total), rel=1e-6)
        for p, g in zip(ps, grads):
            assert torch.allclose(p.grad, g[i], rtol=1e-6, atol=0)
    assert all(torch.equal(g[0], a) for g, a in zip(grads, alone[0]))  # under the clip: left as it was


def test_choice_hits_count_as_choice_share_ties_missing():
    groups = [(0, [1, 2]), (3, [4]), (5, [6, 7]), (8, [9])]
    r = torch.tensor([[3.0, 1, 2, 0, 1, 5, 5, 1, 2, 2], [0.0, 1, 2, 1, 0, 9, 1, 1, 2, 1]])
    hits = choice_hits(r, padded_groups(groups))
    assert [int(h) / len(groups) for h in hits] == [choice_share(row.tolist(), groups) for row in r] == [0.25, 0.75]


def test_stack_blocker_names_what_needs_the_one_head_loop(monkeypatch):
    base = dict(data="x.jsonl", layer="auto")
    assert stack_blocker(Cfg(**base)) is None
    assert "checkpoint" in stack_blocker(Cfg(resume=True, **base))
    assert "checkpoint" in stack_blocker(Cfg(save_every=5, **base))
    assert "accelerate" in stack_blocker(Cfg(grad_accum=2, **base))
    assert "dropout" in stack_blocker(Cfg(dropout=0.1, **base))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "distributed" in stack_blocker(Cfg(**base))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("PREFHEADS_STACKED", "0")
    assert "PREFHEADS_STACKED" in stack_blocker(Cfg(**base))


class _Branchy(nn.Module):
    """A pooler whose Python control flow reads the data: vmap cannot batch it."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h if float(h.sum()) >= 0 else -h


def test_a_pooler_vmap_cannot_run_is_trained_one_by_one():
    heads = [_head("identity", l, None) for l in LAYERS]
    assert stack_blocker(Cfg(data="x.jsonl", layer="auto"), heads) is None
    heads[0].pooler = heads[1].pooler = heads[2].pooler = _Branchy()
    assert "vmap" in stack_blocker(Cfg(data="x.jsonl", layer="auto"), heads)


def test_heads_of_two_structures_share_one_run_and_unstack_into_plain_heads():
    states, scores, groups = _features()
    heads = [_head("identity", 0, None), _head("identity", 0, "logprob_mean"), _head("swiglu", 2, None)]
    cfg = Cfg(data="x.jsonl", epochs=2, batch_size=8, lr=1e-2, layer="auto", lm_score="none", objective="listwise")
    cands = [Candidate(heads[0], states[0]), Candidate(heads[1], states[0], scores), Candidate(heads[2], states[2])]
    train_stacked(cands, groups[:30], groups[30:], cfg)
    assert all(type(h) is RewardHead and not h.training for h in heads)
    assert len(HeadStack(heads[:1])) == 1
    assert not torch.equal(heads[0].reward.weight, heads[1].reward.weight)


def _fit_candidates(tmp_path, monkeypatch, tag: str, stacking: bool, **kw):
    """A --layer auto fit on the tiny llama: ``(result, {candidate: weights}, layer_scores.json, out,
    one-head runs)``; ``stacking`` False sets ``PREFHEADS_STACKED=0``."""
    monkeypatch.setenv("PREFHEADS_STACKED", "1" if stacking else "0")
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = pm.remove_head

    def remove_head(name):  # every candidate leaves through here, the kept one last
        head = real(name)
        seen[name] = {k: v.clone() for k, v in head.state_dict().items()}
        return head

    monkeypatch.setattr(pm, "remove_head", remove_head)
    import prefheads.training.loop as loop

    runs, one = [], loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: runs.append(1) or one(*a, **k))
    out = tmp_path / tag
    res = fit(FitConfig(task="t", out=str(out), epochs=3, batch_size=8, lr=3e-2, layer="auto", layers="0,1,-1",
                        cache_dir=str(tmp_path / "cache"), **kw), pm=pm, progress=False,
              cands=from_examples(_examples(96), "t"))
    return res, seen, json.loads((out / "layer_scores.json").read_text()), out, len(runs)


@pytest.mark.parametrize("pooler,objective", [("identity", "contrastive"), ("identity", "listwise"),
                                              ("swiglu", "listwise")])
def test_layer_auto_stacked_trains_the_heads_and_chooses_the_layer_of_separate_runs(tmp_path, monkeypatch, pooler,
                                                                                    objective):
    kw = dict(objective=objective, pooler=pooler, lm_score="auto")
    r1, heads1, rep1, out1, n1 = _fit_candidates(tmp_path, monkeypatch, "seq", False, **kw)
    r2, heads2, rep2, out2, n2 = _fit_candidates(tmp_path, monkeypatch, "stack", True, **kw)
    assert heads1.keys() == heads2.keys() and len(heads1) == 6  # 3 layers x (with, without the score)
    assert (n1, n2) == (6, 0)  # the one-head loop ran only with stacking off
    for name in heads1:  # SwiGLU at the default init: its output bias is rounding noise (module doc)
        assert _close(heads1[name], heads2[name]) <= (RTOL if pooler == "identity" else 1e-2), name
    assert rep2 == rep1  # layer chosen, val_accuracy per layer and per LM-score variant
    assert (r2.best_epoch, r2.history[-1]["val_accuracy"]) == (r1.best_epoch, r1.history[-1]["val_accuracy"])
    for d in (out1 / "layers").iterdir():
        h1, h2 = (json.loads((o / "layers" / d.name / "history.json").read_text()) for o in (out1, out2))
        assert [r["val_accuracy"] for r in h1] == [r["val_accuracy"] for r in h2]
    m1, m2 = (json.loads((o / "heads.json").read_text())["heads"]["t"]["config"]["meta"] for o in (out1, out2))
    assert m1["chosen_layer"] == m2["chosen_layer"] and m1["layer_scores"] == m2["layer_scores"]
    assert m1.get("lm_score", {}).get("kept") == m2.get("lm_score", {}).get("kept")


@pytest.mark.parametrize("why", ["dropout", "hold", "CPU"])
def test_layer_auto_falls_back_to_one_run_per_head_where_stacking_does_not_apply(tmp_path, monkeypatch, caplog, why):
    import logging

    import prefheads.training.stacked as stacked

    kw = {"dropout": 0.1} if why == "dropout" else {}
    if why == "hold":
        monkeypatch.setattr(stacked, "MAX_STACKED_PARAMETERS", 64)  # 3 identity heads of 32 weights
    if why == "CPU":
        monkeypatch.setattr(stacked, "CPU_STACKED_HEAD_WEIGHTS", 16)
    with caplog.at_level(logging.INFO, logger="prefheads.training.stacked"):
        _, heads, rep, _, n = _fit_candidates(tmp_path, monkeypatch, why, True, pooler="identity", lm_score="none",
                                              objective="listwise", **kw)
    assert "one by one" in caplog.text and why in caplog.text
    assert n == len(heads) == 3 and set(rep["val_accuracy"]) == {"0", "1", "-1"}
