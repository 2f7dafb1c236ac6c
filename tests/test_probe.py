"""The ridge solver: closed-form linear heads, layer / LM score / L2 cross-validated."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.training import FitConfig, fit
from prefheads.training.data import group_wins, padded_groups
from prefheads.training.probe import Candidate, _centre, best, cross_validate, moments, ridge_path
from test_lmscore_heads import _choices, _examples, zero_states  # noqa: F401 - a fixture


def _synthetic(n_groups: int = 120, k: int = 4, d: int = 6, seed: int = 0):
    """Layer 1 carries the answer in dimension 0; layer 0 is noise; the score is weakly right."""
    g = torch.Generator().manual_seed(seed)
    m = n_groups * k
    noise = torch.randn(2, m, d, generator=g)
    groups = [(i * k, [i * k + j for j in range(1, k)]) for i in range(n_groups)]
    states = noise.clone()
    for w, _ in groups:
        states[1, w, 0] += 3.0
    score = torch.randn(m, generator=g)
    score[[w for w, _ in groups][: n_groups // 3]] += 2.0
    return states, score, groups


def test_the_ridge_path_solves_the_normal_equations_with_the_score_unpenalised():
    states, score, groups = _synthetic()
    idx = padded_groups(groups)
    x, z = states.double(), (score.double() - score.mean()) / score.std()
    xc, y = _centre(x, idx)
    zc = _centre(z[None, :, None], idx)[0][0, :, 0]
    n = len(y)
    # every question's rows sum to zero after centring; the preferred row's target is 1 - 1/K
    assert torch.allclose(xc[0].view(-1, 4, 6).sum(1), torch.zeros(1, dtype=torch.float64), atol=1e-9)
    assert y.view(-1, 4)[:, 0].eq(0.75).all()
    w, c = ridge_path(moments(x, idx), [0.01, 1.0])
    assert c is None
    ws, cs = ridge_path(moments(x, idx, z), [0.01, 1.0], score=True)
    for li in range(2):
        for j, lam in enumerate([0.01, 1.0]):
            a = xc[li].T @ xc[li] / n + lam * torch.eye(6, dtype=torch.float64)
            torch.testing.assert_close(w[li, j], torch.linalg.solve(a, xc[li].T @ y / n), rtol=1e-4, atol=1e-5)
            # with the score: the normal equations of [x, z] with the penalty on x only
            full = torch.cat([xc[li], zc[:, None]], 1)
            pen = torch.diag(torch.tensor([lam] * 6 + [0.0], dtype=torch.float64))
            sol = torch.linalg.solve(full.T @ full / n + pen, full.T @ y / n)
            torch.testing.assert_close(ws[li, j], sol[:6], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(cs[li, j], sol[6], rtol=1e-4, atol=1e-5)


def test_cross_validation_finds_the_informative_layer_and_beats_the_score():
    states, score, groups = _synthetic()
    cands = cross_validate(states, score, groups, [5, -1], folds=4, l2=[0.01, 0.1], seed=0)
    assert cands[0] == Candidate(None, True, 0.0, cands[0].cv_accuracy)  # the score alone, first
    win = best(cands)
    assert win.layer == -1 and win.cv_accuracy > 0.9
    assert win.cv_accuracy > cands[0].cv_accuracy + 0.3
    noise = max(c.cv_accuracy for c in cands if c.layer == 5 and not c.score)
    assert noise < 0.6


def test_ties_keep_the_score_alone():
    cands = [Candidate(None, True, 0.0, 0.5), Candidate(3, True, 1.0, 0.5), Candidate(3, False, 1.0, 0.4)]
    assert best(cands).layer is None


def test_choice_hits_counts_ties_as_misses():
    idx = padded_groups([(0, [1, 2]), (3, [4])])
    r = torch.tensor([1.0, 1.0, 0.0, 2.0, 1.0])
    assert group_wins(r, idx).tolist() == [False, True]


def test_fit_defaults_solve_a_linear_head_and_record_every_candidate(tmp_path):
    from prefheads.training.data import from_examples

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    cfg = FitConfig(task="t", out=str(tmp_path / "h"), cache_dir=str(tmp_path / "c"), head_name="h")
    assert (cfg.solver, cfg.pooler, cfg.objective, cfg.layer, cfg.lm_score) == ("ridge", "identity", None, "auto", "auto")
    res = fit(cfg, pm=pm, progress=False, cands=from_examples(_examples(40), "t"))
    head = pm.heads["h"]
    rec = json.loads((tmp_path / "h" / "layer_scores.json").read_text())
    layers = {c["layer"] for c in rec["candidates"]}
    assert None in layers and len(layers - {None}) >= 2  # the score alone and every candidate layer
    assert rec["chosen"] == rec["choice"]["layer"] and rec["choice"]["cv_accuracy"] == max(c["cv_accuracy"] for c in rec["candidates"])
    assert head.config.meta["solver"] == "ridge" and res.best_epoch == 1
    # the saved head scores as the fitted one
    again = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    again.load_heads(tmp_path / "h")
    from prefheads.eval import score_examples

    evals = _examples(12, offset=500)
    got, want = (torch.tensor(score_examples(m, evals).rewards["h"]) for m in (again, pm))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_same_seed_same_head_file(tmp_path):
    from prefheads.training.data import from_examples

    bb, tok = make_backbone("llama")
    files = []
    for run in ("a", "b"):
        pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
        fit(FitConfig(task="t", out=str(tmp_path / run), cache_dir=str(tmp_path / "c"), head_name="h"),
            pm=pm, progress=False, cands=from_examples(_examples(30), "t"))
        files.append(sorted(p.name for p in (tmp_path / run).glob("*.safetensors")))
    assert files[0] == files[1]


@pytest.mark.parametrize(("option", "value"), [("pooler", "swiglu"), ("objective", "separable"), ("mode", "lora")])
def test_ridge_refuses_what_it_cannot_fit(option, value):
    with pytest.raises(ValueError, match="ridge"):
        FitConfig(task="t", solver="ridge", **{option: value})
    assert FitConfig(task="t", **{option: value}).solver == "adamw"


def test_with_zero_states_the_solved_head_chooses_as_the_score(tmp_path, zero_states):
    from prefheads.eval import score_examples
    from prefheads.training.data import from_examples

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(FitConfig(task="t", out=str(tmp_path / "h"), cache_dir=str(tmp_path / "c"), head_name="h", lm_score="logprob_mean"),
        pm=pm, progress=False, cands=from_examples(_examples(40), "t"))
    sc = score_examples(pm, _examples(24, offset=1000))
    assert _choices(sc.rewards["h"]) == _choices(sc.logprob)


def test_several_unpenalised_scores_solve_the_joint_normal_equations():
    states, score, groups = _synthetic()
    idx = padded_groups(groups)
    g = torch.Generator().manual_seed(1)
    z = torch.stack([score, torch.randn(len(score), generator=g), score * 0.5 + torch.randn(len(score), generator=g)], 1)
    z = ((z - z.mean(0)) / z.std(0)).double()
    x = states.double()
    xc, y = _centre(x, idx)
    zc = _centre(z[None], idx)[0][0]
    n = len(y)
    ws, cs = ridge_path(moments(x, idx, z), [0.1], score=True)
    assert cs.shape == (2, 1, 3)
    for li in range(2):
        full = torch.cat([xc[li], zc], 1)
        pen = torch.diag(torch.tensor([0.1] * 6 + [0.0] * 3, dtype=torch.float64))
        sol = torch.linalg.solve(full.T @ full / n + pen, full.T @ y / n)
        torch.testing.assert_close(ws[li, 0], sol[:6], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cs[li, 0], sol[6:], rtol=1e-4, atol=1e-5)
    # the combination is a candidate alone and beside every layer, after the single score
    cands = cross_validate(states, score, groups, [5, -1], folds=4, l2=[0.1], seed=0, combo=z.float())
    assert [(c.layer, c.score, c.combo) for c in cands[:2]] == [(None, True, False), (None, True, True)]
    assert sum(c.combo for c in cands) == 1 + 2


def test_nearly_collinear_scores_on_few_rows_still_solve():
    """Six scores, two of them twins (a summed log-prob in both views), fewer rows than state
    dimensions: the projection stays positive semi-definite and the solution is the ridge fit of
    the states' residuals off the scores' span."""
    g = torch.Generator().manual_seed(3)
    groups = [(i * 2, [i * 2 + 1]) for i in range(16)]
    x = torch.randn(1, 32, 40, generator=g, dtype=torch.float64)
    base = torch.randn(32, 4, generator=g, dtype=torch.float64)
    z = torch.cat([base, base[:, :2] * 3.0 + 1e-9 * torch.randn(32, 2, generator=g, dtype=torch.float64)], 1)
    z = (z - z.mean(0)) / z.std(0)
    idx = padded_groups(groups)
    w, c = ridge_path(moments(x, idx, z), [1e-3], score=True)
    assert torch.isfinite(w).all() and torch.isfinite(c).all() and c.shape == (1, 1, 6)
    xc, y = _centre(x, idx)
    zc = _centre(z[None], idx)[0][0]
    q = torch.linalg.svd(zc, full_matrices=False)[0][:, :4]  # the scores' span (rank 4)
    xr, yr = xc[0] - q @ (q.T @ xc[0]), y - q @ (q.T @ y)
    want = torch.linalg.solve(xr.T @ xr / len(y) + 1e-3 * torch.eye(40, dtype=torch.float64), xr.T @ yr / len(y))
    torch.testing.assert_close(w[0, 0], want, rtol=1e-3, atol=1e-4)
    fit_ = xc[0] @ w[0, 0] + zc @ c[0, 0]  # the scores take up what the states leave
    torch.testing.assert_close(q.T @ (y - fit_), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-6)
    cands = cross_validate(x.float(), z[:, 0].float(), groups, [-1], folds=4, l2=[1e-3, 1.0], combo=z.float())
    assert all(0.0 <= cand.cv_accuracy <= 1.0 for cand in cands)


def test_pairs_of_one_prompt_stay_on_one_side_of_the_split_and_of_each_fold():
    """Several preference pairs of one conversation: validation (epoch, layer choice) and every
    cross-validation fold must hold out whole prompts, never score a prompt training saw."""
    from prefheads.training.data import Candidates, prompt_keys, split
    from prefheads.training.probe import fold_parts

    cands = Candidates()
    for i in range(60):  # 20 prompts, 1-5 pairs each
        prompt = [{"role": "user", "content": f"prompt {i % 20}"}]
        base = len(cands.completions)
        cands.prompts += [prompt, prompt]
        cands.completions += [f"good {i}", f"bad {i}"]
        cands.groups.append((base, [base + 1]))
        cands.ids.append(str(i))
    keys = prompt_keys(cands)
    assert len(set(keys)) == 20
    for seed in range(5):
        tr, va = split(len(cands), 0.1, seed, keys=keys)
        assert sorted(tr + va) == list(range(60)) and va and tr
        assert not {keys[g] for g in tr} & {keys[g] for g in va}
        parts = fold_parts(60, 5, seed, keys)
        assert sorted(torch.cat(parts).tolist()) == list(range(60)) and len(parts) >= 2
        for p in parts:
            held = {keys[g] for g in p.tolist()}
            assert not held & {keys[g] for g in range(60) if g not in set(p.tolist())}
    # a key of its own keeps its side and fold: one shared prompt moves its own items only
    few = [str(i) for i in range(60)]
    few[7] = few[40] = few[51] = "shared"
    for seed in range(5):
        tr0, va0 = split(60, 0.1, seed)
        tr, va = split(60, 0.1, seed, keys=few)
        assert {i for i in va0 if few[i] != "shared"} == {i for i in va if few[i] != "shared"}
        assert len({i for i in (7, 40, 51) if i in va}) in (0, 3)
    # distinct keys: the split and the folds without keys, unchanged
    distinct = [str(i) for i in range(60)]
    assert split(60, 0.1, 3, keys=distinct) == split(60, 0.1, 3)
    assert all(torch.equal(a, b) for a, b in zip(fold_parts(60, 5, 3, distinct), fold_parts(60, 5, 3)))
