"""Log-prob-aware heads: r = head(h) + softplus(a)·(s - μ)/σ, with s the LM's own score."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.eval import score_examples
from prefheads.training import FitConfig, fit
from prefheads.types import Example
from test_fit_cli import _pairs_file

QUESTIONS = ["the quick brown fox", "what is the capital of France?", "hello world", "positive or negative?",
             "Sentence 1", "an instruction that describes a task", "system user assistant", "True or False?"]
CHOICES = ["yes", "no", "Paris", "the lazy dog", "positive True", "negative False"]


def _examples(n: int, offset: int = 0) -> list[Example]:
    out = []
    for i in range(n):
        q = f"{QUESTIONS[(i + offset) % len(QUESTIONS)]} ({i + offset})"
        ch = [CHOICES[(i + offset + k) % len(CHOICES)] for k in range(4)]
        out.append(Example(id=f"q{i + offset}", prompt=[{"role": "user", "content": q}], choices=ch,
                           label=(i * 7 + offset) % 4, task="t"))
    return out


@pytest.fixture
def zero_states(monkeypatch):
    """An uninformative hidden state: every state the engine returns is zero (log-probs are real)."""
    import prefheads.engine as engine
    import prefheads.model.core as model

    real = engine.extract

    def extract(*a, **k):
        f = real(*a, **k)
        f.states = {l: torch.zeros_like(v) for l, v in f.states.items()}
        return f

    monkeypatch.setattr(engine, "extract", extract)
    monkeypatch.setattr(model, "extract", extract)


def _choices(table):
    return [max(range(len(r)), key=lambda j: (r[j], -j)) for r in table]


@pytest.mark.parametrize("wanted", ["logprob_mean", "raw:logprob_char", "auto"])
def test_with_an_uninformative_state_the_head_chooses_as_its_lm_score(tmp_path, zero_states, wanted):
    from prefheads.lmscores import LM_SCORES, all_scores, score_names
    from prefheads.training.data import from_examples

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    cfg = FitConfig(task="t", out=str(tmp_path / "h"), lm_score=wanted, cache_dir=str(tmp_path / "c"), head_name="h")
    fit(cfg, pm=pm, progress=False, cands=from_examples(_examples(40), "t"))
    head_cfg = pm.heads["h"].config
    meta = head_cfg.meta["lm_score"]
    train_acc = meta["train_accuracy"]
    # the chat-turn scores, and the raw view's where the raw pass runs (auto, or a raw: score)
    assert set(train_acc) == set(score_names() if wanted != "logprob_mean" else LM_SCORES.names())
    assert meta["kept"] in ("score", "scores")  # a zero state adds nothing: never kept
    assert not pm.heads["h"].reward.weight.any()
    if wanted == "auto":
        assert train_acc[meta["score"]] == max(train_acc.values())
    else:
        assert meta["score"] == wanted and head_cfg.score_input == wanted
    evals = _examples(24, offset=1000)
    sc = score_examples(pm, evals)
    head = _choices(sc.rewards["h"])
    prompts = [ex.prompt for ex in evals for _ in ex.choices]
    comps = [c for ex in evals for c in ex.choices]
    rules = all_scores(pm.features(prompts, comps, layers=[-1], logprobs=True, raw=True), comps)
    if meta["kept"] == "score":
        rule = rules[meta["score"]].view(len(evals), 4).tolist()
        assert head == _choices(rule)  # the baseline's choices, exactly
        if meta["score"] == "logprob_mean":
            assert head == _choices(sc.methods()["logprob"])  # = the paper's log-prob method
    else:  # the fitted combination of every score, alone
        assert head_cfg.score_input == list(rules)


@pytest.mark.parametrize("how", [{"solver": "adamw", "layer": "-1", "lm_score": "auto"}, {"lm_score": "logprob_sum"}],
                         ids=["adamw", "ridge"])
def test_a_log_prob_aware_head_round_trips_and_scores_anywhere(tmp_path, how):
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=24)
    fit(FitConfig(data=str(data), out=str(tmp_path / "h"), epochs=2, batch_size=8, lr=3e-3,
                  cache_dir=str(tmp_path / "c"), **how), pm=pm, progress=False)
    cfg = json.loads((tmp_path / "h" / "heads.json").read_text())["heads"]["default"]["config"]
    assert cfg["score_input"] in ("logprob_sum", "logprob_mean", "logprob_char")
    assert cfg["meta"]["lm_score"]["kept"] in ("head", "score")
    pm2 = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    pm2.load_heads(tmp_path / "h")
    q, cands = "Question 3: is the fox quick?", ["yes, the quick brown fox", "no lazy dog"]
    one = pm2.score(q, cands)
    assert torch.allclose(one, pm.score(q, cands), atol=1e-5)
    assert torch.allclose(pm2.score_all_heads(q, cands)["default"], one, atol=1e-5)
    assert torch.allclose(torch.cat([pm2.score(q, c) for c in cands]), one, atol=1e-4)


def test_a_log_prob_aware_head_refuses_missing_scores():
    from prefheads.heads import HeadConfig, RewardHead

    head = RewardHead(HeadConfig(pooler="identity", hidden_size=8, score_input="logprob_mean"))
    with pytest.raises(ValueError, match="pass scores"):
        head(torch.zeros(2, 8))
    with pytest.raises(KeyError, match="logprob_mean"):
        HeadConfig(pooler="identity", hidden_size=8, score_input="nope")


def test_lm_score_option_is_checked():
    with pytest.raises(ValueError, match="lm_score"):
        FitConfig(task="x", lm_score="nope")
    with pytest.raises(ValueError, match="frozen mode only"):
        FitConfig(task="x", lm_score="logprob_sum", mode="lora")


def test_pooled_scoring_of_encoded_items_gives_a_log_prob_aware_head_its_scores(tmp_path):
    """The batching server and bulk scoring score encoded items: the LM score comes with them."""
    from prefheads.infer.scoring import encode_all, score_items

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    pm.add_head("plain", "identity")
    pm.add_head("lp", "identity", score_input="logprob_char")
    pm.heads["lp"].score_scale.data.fill_(3.0)
    prompts, cands = ["q one", "q one", "another q"], ["yes", "no, the lazy dog", "Paris"]
    pooled = score_items(pm, encode_all(pm, prompts, cands), shared_prefix=False)
    direct = pm.score_all_heads(prompts, cands, shared_prefix=False)
    for h in ("plain", "lp"):
        assert torch.allclose(pooled[h], direct[h], atol=1e-5)
    assert not torch.allclose(direct["lp"], direct["plain"], atol=1e-3)


def test_layer_auto_with_lm_score_auto_chooses_layer_and_score_on_validation(tmp_path):
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=40)
    res = fit(FitConfig(data=str(data), out=str(tmp_path / "h"), epochs=2, batch_size=8, lr=3e-3, layer="auto",
                        layers="0,-1", lm_score="auto", pooler="identity", cache_dir=str(tmp_path / "c"),
                        solver="adamw"),
              pm=pm, progress=False)
    rep = json.loads((tmp_path / "h" / "layer_scores.json").read_text())
    by = rep["val_accuracy_by_lm_score"]
    assert set(by) == {"0", "-1"}
    assert all(len(v) == 2 and "none" in v for v in by.values())  # with and without the score, per layer
    best = max(x for v in by.values() for x in v.values())
    assert res.best["val_accuracy"] <= best and max(by[str(rep["chosen"])].values()) == best
    head = pm.heads["default"]
    kept = "none" if not head.uses_scores else head.config.score_input
    assert by[str(rep["chosen"])][kept] == best


def test_a_head_of_several_scores_from_both_views_round_trips_and_scores_on_every_path(tmp_path):
    """``--lm-score all``: a fitted combination of the six scores (chat turn and raw view). The
    saved head scores the same through score, score_all_heads, pooled encoded items (server,
    bulk) and score_examples (eval); the raw view's pass comes with each of them."""
    from prefheads.eval import score_examples
    from prefheads.infer.scoring import encode_all, score_items
    from prefheads.lmscores import score_names

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=40)
    fit(FitConfig(data=str(data), out=str(tmp_path / "h"), lm_score="all", layer="-1", cache_dir=str(tmp_path / "c")),
        pm=pm, progress=False)
    saved = json.loads((tmp_path / "h" / "heads.json").read_text())["heads"]["default"]["config"]
    assert saved["score_input"] == score_names() and saved["meta"]["lm_score"]["combined"] == score_names()
    pm2 = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    pm2.load_heads(tmp_path / "h")
    head = pm2.heads["default"]
    assert head.uses_raw_view and head.score_weight.shape == (6,) and head.score_weight.abs().sum() > 0
    q, cands = "Question 3: is the fox quick?", ["yes, the quick brown fox", "no lazy dog", "Paris"]
    one = pm2.score(q, cands)
    assert torch.allclose(one, pm.score(q, cands), atol=1e-5)
    assert torch.allclose(pm2.score_all_heads(q, cands)["default"], one, atol=1e-5)
    assert torch.allclose(score_items(pm2, encode_all(pm2, [q] * 3, cands))["default"], one, atol=1e-5)
    ex = Example(id="e", prompt=[{"role": "user", "content": q}], choices=cands, label=0, task="t")
    assert torch.allclose(torch.tensor(score_examples(pm2, [ex]).rewards["default"][0]), one, atol=1e-5)
    with pytest.raises(ValueError, match="encode_all"):  # items without their raw view
        score_items(pm2, pm2.encode([q] * 3, cands))
    with pytest.raises(ValueError, match="raw view"):
        pm2(pm2.features([q] * 3, cands, logprobs=True).states, "default",
            pm2.lm_scores(pm2.features([q] * 3, cands, logprobs=True), cands))


def test_score_combinations_and_raw_scores_are_the_ridge_solvers():
    with pytest.raises(ValueError, match="ridge solver"):
        FitConfig(task="x", lm_score="all", solver="adamw")
    with pytest.raises(ValueError, match="ridge solver"):
        FitConfig(task="x", lm_score="raw:logprob_sum", pooler="swiglu")
    from prefheads.heads import HeadConfig

    with pytest.raises(ValueError, match="distinct"):
        HeadConfig(pooler="identity", hidden_size=8, score_input=["logprob_sum", "logprob_sum"])
    with pytest.raises(KeyError, match="logprob_mean"):
        HeadConfig(pooler="identity", hidden_size=8, score_input=["raw:nope"])


def test_a_head_of_several_scores_starts_a_training_loop_without_its_scores(tmp_path):
    """The training loop computes one chat-turn score: a probe of six scores (raw view included)
    starts a LoRA run from its hidden-state weights and standardiser, the score term left out."""
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=16)
    fit(FitConfig(data=str(data), out=str(tmp_path / "h"), lm_score="all", layer="-1", cache_dir=str(tmp_path / "c")),
        pm=pm, progress=False)
    probe = pm.heads["default"].state_dict()
    pm2 = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(FitConfig(data=str(data), out=str(tmp_path / "l"), mode="lora", init_head=str(tmp_path / "h"), epochs=1,
                  batch_size=8, lr=0.0, head_lr=0.0, cache_dir=str(tmp_path / "c")), pm=pm2, progress=False)
    got = pm2.heads["default"]
    assert not got.uses_scores and got.config.meta["init_head_scores_dropped"] == probe_names(tmp_path / "h")
    for k, v in got.state_dict().items():  # lr 0: the probe's hidden-state part, unchanged
        assert torch.equal(v, probe[k]), k


def probe_names(folder) -> list[str]:
    return json.loads((folder / "heads.json").read_text())["heads"]["default"]["config"]["score_input"]
