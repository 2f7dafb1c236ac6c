"""Layer-aware heads: per-layer capture, layer specs, --layer auto, layermix, early exit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
import torch

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.headio import HeadFileError
from prefheads.hooks import parse_layers
from prefheads.training.cache import layer_features
from prefheads.training import FitConfig, fit
from test_fit_cli import _pairs_file

PROMPTS = ["Question: what is the capital of France?"] * 2 + ["hello world"]
COMPS = ["Paris", "London", "yes"]


def test_parse_layers():
    assert parse_layers("all", 3) == [0, 1, 2, -1]
    assert parse_layers("0,2", 3) == [0, 2]
    assert parse_layers("1:", 3) == [1, 2]
    assert parse_layers("0:2,-1", 3) == [0, 1, -1]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("5", 3)
    with pytest.raises(ValueError, match="bad layer spec part 'x'"):
        parse_layers("1,x", 3)


def test_every_layer_from_one_pass_matches_hidden_states(family):
    bb, tok = make_backbone(family)
    pm = PreferenceModel.from_backbone(bb, tok)
    feats = layer_features(pm, PROMPTS, COMPS, "all")
    assert set(feats) == {0, 1, 2, -1}
    for i, item in enumerate(pm.encode(PROMPTS, COMPS)):
        hs = bb(input_ids=torch.tensor([item.ids]), output_hidden_states=True).hidden_states
        # hidden_states[k + 1] is block k's output, except the last entry which is after the final norm
        for k in (0, 1):
            assert torch.allclose(feats[k][i], hs[k + 1][0, -1], atol=1e-4), (family, k)
        assert torch.allclose(feats[-1][i], hs[-1][0, -1], atol=1e-4)


def _data(tmp_path):
    return _pairs_file(tmp_path / "pairs.jsonl", n=40)


def test_layer_auto_chooses_on_validation_only_and_records_scores(tmp_path, monkeypatch):
    import sys

    fit_mod = sys.modules["prefheads.training.fit"]

    seen = []
    real = fit_mod.split
    monkeypatch.setattr(fit_mod, "split", lambda n, f, s, **kw: seen.append((n, f)) or real(n, f, s, **kw))
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    res = fit(FitConfig(data=str(_data(tmp_path)), out=str(tmp_path / "o"), layer="auto", layers="0,2,-1",
                        pooler="identity", epochs=3, batch_size=8, lr=3e-3, cache_dir=str(tmp_path / "c"),
                        solver="adamw"),
              pm=pm, progress=False)
    meta = pm.heads["default"].config.meta
    assert set(meta["layer_scores"]) == {"0", "2", "-1"}
    assert meta["chosen_layer"] == pm.heads["default"].config.layer
    assert meta["layer_scores"][str(meta["chosen_layer"])] == max(meta["layer_scores"].values())
    assert seen == [(40, 0.1)]  # selection data = the validation share of the training file only
    assert pm.head_names == ["default"]
    card = (tmp_path / "o" / "README.md").read_text()
    assert "per layer" in card
    saved = json.loads((tmp_path / "o" / "layer_scores.json").read_text())
    assert saved["chosen"] == meta["chosen_layer"]
    with pytest.raises(ValueError, match="frozen mode only"):
        FitConfig(task="x", layer="auto", mode="lora")


def test_layermix_trains_saves_loads_and_refuses_other_depths(tmp_path):
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(FitConfig(data=str(_data(tmp_path)), out=str(tmp_path / "o"), pooler="layermix", layers="all",
                  layermix_inner="bert", epochs=3, batch_size=8, lr=3e-3, cache_dir=str(tmp_path / "c")),
        pm=pm, progress=False)
    head = pm.heads["default"]
    assert head.config.layers == [0, 1, 2, -1] and head.pooler.logits.shape == (4,)
    want = pm.score(PROMPTS, COMPS)
    pm2 = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    pm2.load_heads(tmp_path / "o")
    assert torch.equal(pm2.score(PROMPTS, COMPS), want)
    from transformers import AutoModelForCausalLM

    cfg = bb.config.__class__.from_dict(bb.config.to_dict())
    cfg.num_hidden_layers = 2
    shallow = PreferenceModel.from_backbone(AutoModelForCausalLM.from_config(cfg), tok, model_id="tiny/llama")
    with pytest.raises(HeadFileError, match="mixes layers"):
        shallow.load_heads(tmp_path / "o", allow_base_mismatch=True)


def test_early_exit_is_exact_and_skips_later_blocks():
    from prefheads.families import get_module, unwrap

    bb, tok = make_backbone("qwen2")
    pm = PreferenceModel.from_backbone(bb, tok)
    pm.add_head("early", "swiglu", layer=1)
    pm.heads["early"].eval()
    ran = []
    hooks = [b.register_forward_hook(lambda *a, k=k: ran.append(k))
             for k, b in enumerate(get_module(unwrap(bb), pm.profile.layers))]
    fast = pm.score(PROMPTS, COMPS)
    for h in hooks:
        h.remove()
    assert max(ran) == 1
    full = pm(layer_features(pm, PROMPTS, COMPS, "all"), "early")  # includes the final norm: no early exit
    assert torch.allclose(fast, full, atol=1e-6)


def test_layers_command(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import save_to_hub_cache

    bb, tok = make_backbone("llama")
    save_to_hub_cache(bb, tok, "tiny/layers", tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(tmp_path / "c"))
    data = _data(tmp_path)
    script = ("import sys; from prefheads.commands.layers import run_layers; from pathlib import Path; "
              f"run_layers('pairs:{data}', 'tiny/layers', None, 'all', 'identity', None, 3, Path(r'{tmp_path / 'o'}'), 0)")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "o" / "layers.json").read_text())
    assert set(rep["val_accuracy"]) == {"0", "1", "2", "-1"} and 0 <= rep["logprob_val_accuracy"] <= 1
    assert (tmp_path / "o" / "layers.png").stat().st_size > 1000


def test_the_log_prob_reference_scores_the_heads_validation_questions_when_a_budget_cuts(tmp_path, monkeypatch):
    """A time budget that keeps a share of the data: the reference must score that share's
    validation questions, not a split of all the data (which holds the heads' training rows)."""
    from prefheads.commands import layers as layers_cmd
    from prefheads.training import budget

    bb, tok = make_backbone("llama")
    bb.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    monkeypatch.setenv("PREFHEADS_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(budget, "affordable", lambda n, est, minutes: max(2, n // 4))
    seen = []
    real = layers_cmd.logprob_accuracy
    monkeypatch.setattr(layers_cmd, "logprob_accuracy", lambda pm, c: seen.append(len(c)) or real(pm, c))
    rep = layers_cmd.run_layers(f"pairs:{_data(tmp_path)}", str(tmp_path / "base"), None, "0,-1", "identity", None, 1,
                                tmp_path / "o", 0)
    assert rep["n_train"] + rep["n_val"] == 10  # a quarter of the 40 pairs
    assert seen == [rep["n_val"]]
    # other options into the same folder: refused, naming --overwrite, which the command has
    with pytest.raises(Exception, match="--overwrite"):
        layers_cmd.run_layers(f"pairs:{_data(tmp_path)}", str(tmp_path / "base"), None, "0", "identity", None, 1,
                              tmp_path / "o", 0)
    rep = layers_cmd.run_layers(f"pairs:{_data(tmp_path)}", str(tmp_path / "base"), None, "0", "identity", None, 1,
                                tmp_path / "o", 0, overwrite=True)
    assert set(rep["val_accuracy"]) == {0}
    from prefheads.cli import app

    assert "--overwrite" in CliRunner().invoke(app, ["layers", "--help"]).output
    assert "--overwrite" in CliRunner().invoke(app, ["demo", "--help"]).output
