"""fit / score: Python API and CLI, including the hub-id path served from an offline HF cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PAPER_HEAD, make_backbone, save_to_hub_cache
from prefheads import PreferenceModel
from prefheads.training import FitConfig, fit


def _pairs_file(path: Path, n: int = 60) -> Path:
    # learnable: the preferred answer is always the polite one
    rows = [{"prompt": f"Question {i}: is the fox quick?", "chosen": "yes, the quick brown fox",
             "rejected": "no lazy dog"} if i % 2 else
            {"prompt": [{"role": "user", "content": f"Sentence {i}: hello world"}],
             "chosen": "positive True", "rejected": "negative False"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_python_api_learns_and_is_reproducible(tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    bb, tok = make_backbone("llama")
    heads = []
    for run in ("a", "b"):
        pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
        cfg = FitConfig(data=str(data), out=str(tmp_path / run), epochs=5, batch_size=8, lr=3e-3, seed=3, **PAPER_HEAD)
        res = fit(cfg, pm=pm, progress=False)
        heads.append({k: v.clone() for k, v in pm.heads["default"].state_dict().items()})
    assert res.n_train == 54 and res.n_val == 6
    assert res.history[res.best_epoch - 1]["val_pair_accuracy"] == 1.0
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])  # same seed -> same bits
    assert (tmp_path / "a" / "heads.json").is_file() and (tmp_path / "a" / "metrics.jsonl").stat().st_size > 0
    saved = json.loads((tmp_path / "a" / "fit_config.json").read_text())
    assert saved["seed"] == 3 and saved["epochs"] == 5
    meta = json.loads((tmp_path / "a" / "heads.json").read_text())["heads"]["default"]["config"]
    assert meta["dropout"] == 0.0  # frozen backbone: no pooler dropout


def test_fit_config_validates():
    with pytest.raises(ValueError, match="--task"):
        FitConfig()
    with pytest.raises(ValueError, match="objective"):
        FitConfig(task="x", objective="nope")
    with pytest.raises(ValueError, match="unknown fit option"):
        FitConfig.from_dict({"task": "x", "epoch": 3})


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "prefheads.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_fit_and_score_with_a_hub_id_offline(tmp_path):
    """`--base Qwen/Qwen1.5-0.5B-Chat` resolves through the HF cache, as for a real user."""
    bb, tok = make_backbone("qwen2")
    save_to_hub_cache(bb, tok, "Qwen/Qwen1.5-0.5B-Chat", tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(tmp_path / "c"))
    data = _pairs_file(tmp_path / "pairs.jsonl")
    r = _cli(["fit", "--base", "Qwen/Qwen1.5-0.5B-Chat", "--data", str(data), "--out", str(tmp_path / "h"),
              "--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--pooler", "bert"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "saved to" in r.stdout
    cfg = json.loads((tmp_path / "h" / "heads.json").read_text())
    assert cfg["base"]["model_id"] == "Qwen/Qwen1.5-0.5B-Chat" and cfg["base"]["model_type"] == "qwen2"
    # base omitted: taken from the head folder
    r = _cli(["score", "--heads", str(tmp_path / "h"), "--prompt", "Question 3: is the fox quick?",
              "--candidate", "no lazy dog", "--candidate", "yes, the quick brown fox", "--json"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    ranked = json.loads(r.stdout)
    assert ranked[0]["candidate"] == "yes, the quick brown fox" and ranked[0]["reward"] > ranked[1]["reward"]


def test_cli_errors_are_clear(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    r = _cli(["score", "--heads", str(tmp_path / "nothing"), "--prompt", "x", "--candidate", "y"], env)
    assert r.returncode != 0 and "heads.json" in (r.stderr + r.stdout)


def test_fit_template_lm_eval_trains_on_harness_prompts(tmp_path):
    from prefheads import tasks
    from prefheads.training.fit import training_candidates

    cfg = FitConfig(task="openbookqa", data_dir="bundled", template="lm-eval", max_train=12, seed=1,
                    out=str(tmp_path / "h"), epochs=1, batch_size=4)
    cands = training_candidates(cfg)
    want = {ex.id: ex for ex in tasks.load_examples("openbookqa", "train", "bundled", variant="lm-eval")}
    paper = {ex.id: ex for ex in tasks.load_examples("openbookqa", "train", "bundled")}
    ex_id, (best, _) = cands.ids[0], cands.groups[0]
    assert cands.prompts[best] == want[ex_id].prompt != paper[ex_id].prompt  # the harness prompt, not the paper's
    assert cands.completions[best] == want[ex_id].choices[want[ex_id].label]
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(cfg, pm=pm, progress=False)
    meta = json.loads((tmp_path / "h" / "heads.json").read_text())["heads"]["openbookqa"]["config"]["meta"]
    assert meta["template"] == "lm-eval"
    with pytest.raises(Exception, match="defines no such task"):
        training_candidates(FitConfig(task="glue/stsb", data_dir="bundled", template="lm-eval"))


def test_init_head_starts_from_a_saved_probe(tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl", n=24)
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(FitConfig(data=str(data), out=str(tmp_path / "probe"), head_name="probe", epochs=2, batch_size=8,
                  lr=3e-3), pm=pm, progress=False)
    probe = {k: v.clone() for k, v in pm.heads["probe"].state_dict().items()}
    assert not torch.equal(probe["input_std"], torch.ones_like(probe["input_std"]))  # a fitted standardiser
    pm2 = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(FitConfig(data=str(data), out=str(tmp_path / "lora"), mode="lora", init_head=str(tmp_path / "probe"),
                  epochs=1, batch_size=8, lr=0.0, head_lr=0.0), pm=pm2, progress=False)
    got = pm2.heads["default"]
    # lr 0: the probe, unchanged (a probe of several LM scores starts the loop without its score term)
    assert all(torch.equal(got.state_dict()[k], v) for k, v in probe.items() if not k.startswith("score_"))
    assert got.uses_scores == ("score_scale" in probe)
    assert got.dropout.p == 0.1 and got.config.meta["init_head"].endswith(":probe")
    assert json.loads((tmp_path / "lora" / "fit_config.json").read_text())["pooler"] == got.config.pooler
    fresh = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")
    with pytest.raises(ValueError, match="no head named 'nope'"):
        fit(FitConfig(data=str(data), out=str(tmp_path / "x"), init_head=f"{tmp_path / 'probe'}:nope"),
            pm=fresh, progress=False)
    with pytest.raises(ValueError, match="no such head folder"):
        fit(FitConfig(data=str(data), out=str(tmp_path / "x"), init_head=str(tmp_path / "missing")),
            pm=fresh, progress=False)
    with pytest.raises(ValueError, match="changed backbone"):  # the LoRA run's head needs its adapter
        fit(FitConfig(data=str(data), out=str(tmp_path / "x"), init_head=str(tmp_path / "lora")),
            pm=fresh, progress=False)
