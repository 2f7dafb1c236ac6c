"""Training modes, cDPO reference, prior regularization, feature cache, resume, distributed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PAPER_ARGS, make_backbone, save_to_hub_cache
from prefheads import PreferenceModel
from prefheads.training import MODES, FitConfig, fit
from prefheads.training.fit import training_candidates
from test_fit_cli import _pairs_file


def _pm(family="llama"):
    bb, tok = make_backbone(family)
    return PreferenceModel.from_backbone(bb, tok, model_id=f"tiny/{family}")


def _run(tmp_path, name, n=60, **kw):
    data = _pairs_file(tmp_path / "pairs.jsonl", n=n)
    pm = _pm()
    opts = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "cache_dir": str(tmp_path / "cache"), **kw}
    cfg = FitConfig(data=str(data), out=str(tmp_path / name), **opts)
    return pm, fit(cfg, pm=pm, progress=False)


@pytest.mark.parametrize("mode", MODES.names())
def test_each_mode_learns_and_reloads(tmp_path, mode):
    before = {k: v.clone() for k, v in _pm().backbone.state_dict().items()}
    pm, res = _run(tmp_path, mode, mode=mode)
    assert res.best["val_pair_accuracy"] == 1.0
    after = pm.backbone.state_dict() if mode != "lora" else pm.backbone.get_base_model().state_dict()
    changed = any(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert changed == (mode == "full")  # frozen and lora never touch the base weights
    out = tmp_path / mode
    if mode == "lora":
        assert (out / "adapter" / "adapter_config.json").is_file()
        pm2 = _pm()
        pm2.load_heads(out)  # applies the saved adapter to a fresh base
    elif mode == "full":
        pm2 = PreferenceModel.from_pretrained(str(out / "backbone"), heads=out)
    else:
        pm2 = _pm()
        pm2.load_heads(out)
    q = ["Question 3: is the fox quick?"] * 2
    assert torch.allclose(pm2.score(q, ["yes", "no"]), pm.score(q, ["yes", "no"]), atol=1e-5)


def test_full_mode_heads_refuse_the_original_base(tmp_path):
    _run(tmp_path, "full", mode="full")
    from prefheads.headio import HeadFileError

    with pytest.raises(HeadFileError, match="backbone"):
        _pm().load_heads(tmp_path / "full")


def test_cdpo_reference_is_the_adapter_free_model_computed_once(tmp_path, monkeypatch):
    from prefheads.training import strategies

    calls = []
    real = strategies.Trainable._reference_logprobs
    monkeypatch.setattr(strategies.Trainable, "_reference_logprobs",
                        lambda self: calls.append(1) or real(self))
    data = _pairs_file(tmp_path / "pairs.jsonl", n=20)
    pm = _pm()
    base = pm.features(["Question 1: is the fox quick?"], ["yes, the quick brown fox"], logprobs=True).logprob_sum
    cfg = FitConfig(data=str(data), out=str(tmp_path / "o"), mode="lora", dpo_weight=1.0, epochs=2,
                    batch_size=4, lr=3e-3, beta=0.6, dpo_eps=0.25)
    pm.add_head("default", "swiglu")
    trainable = strategies.MODES.get("lora")(pm, "default", training_candidates(cfg), cfg)
    trainable.setup()
    assert calls == [1]
    i = trainable.cands.completions.index("yes, the quick brown fox")
    assert torch.allclose(trainable.ref_logp[i], base[0], atol=1e-5)  # LoRA starts at zero: ref == base
    # no second model copy: besides the adapters, the parameters are the base model's, once
    n_base = sum(p.numel() for n, p in pm.backbone.named_parameters() if "lora_" not in n)
    assert n_base == sum(p.numel() for p in _pm().backbone.parameters())


def test_cdpo_needs_a_trainable_policy(tmp_path):
    with pytest.raises(ValueError, match="lora or --mode full"):
        _run(tmp_path, "x", mode="frozen", dpo_weight=1.0)


def test_prior_regularization_pulls_toward_the_start(tmp_path):
    init = {k: v.clone() for k, v in _pm().backbone.state_dict().items()}

    def dist(pm):
        sd = pm.backbone.state_dict()
        return sum(float((sd[k] - init[k]).pow(2).sum()) for k in init if sd[k].is_floating_point())

    free, _ = _run(tmp_path, "free", mode="full", prior=0.0, lr=1e-2)
    held, _ = _run(tmp_path, "held", mode="full", prior=50.0, lr=1e-2)
    assert dist(held) < 0.5 * dist(free)


def test_prior_decays_at_the_backbone_lr_not_the_head_lr(tmp_path, monkeypatch):
    from prefheads import optim

    seen = []
    real = optim.PriorRegularizer.step
    monkeypatch.setattr(optim.PriorRegularizer, "step", lambda self, lr: seen.append(lr) or real(self, lr))
    # head_lr·prior = 1.5 > 1: decaying the backbone at the head's lr is not even a valid step
    _run(tmp_path, "full", mode="full", epochs=1, batch_size=4, lr=1e-5, head_lr=3.0, prior=0.5,
         warmup_ratio=0.0, final_lr_ratio=1.0, n=10)
    assert seen and all(lr == pytest.approx(1e-5) for lr in seen)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_weight_decay_is_the_heads_alone(tmp_path, monkeypatch, mode):
    made = []

    class Spy(torch.optim.AdamW):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    pm, _ = _run(tmp_path, mode, mode=mode, epochs=1, batch_size=4, weight_decay=0.1, n=10)
    head = {id(p) for p in pm.heads["default"].parameters()}
    decay = {id(p): g["weight_decay"] for g in made[0].param_groups for p in g["params"]}
    assert {decay[i] for i in decay if i in head} == {0.1}
    assert {decay[i] for i in decay if i not in head} == {0.0}  # adapters / backbone: none


def test_feature_cache_is_reused_across_runs_and_keyed(tmp_path):
    _, a = _run(tmp_path, "a")
    pm, b = _run(tmp_path, "b")
    assert not a.cache_hit and b.cache_hit
    ha = json.loads((tmp_path / "a" / "heads.json").read_text())["heads"]["default"]["sha256"]
    hb = json.loads((tmp_path / "b" / "heads.json").read_text())["heads"]["default"]["sha256"]
    assert ha == hb  # same data + seed -> same bits, with or without the cache
    _, c = _run(tmp_path, "c", layer=0)
    _, d = _run(tmp_path, "d", cache_dtype="float16")
    assert not c.cache_hit and not d.cache_hit
    # one file per (rows, weights, dtype) and view (the chat turn's, and the raw view's log-probs of
    # the default head's LM scores): layer 0 joined the last layer's file
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2 * 2
    _, e = _run(tmp_path, "e", layer=0)
    _, f = _run(tmp_path, "f")
    assert e.cache_hit and f.cache_hit
    he = json.loads((tmp_path / "e" / "heads.json").read_text())["heads"]["default"]["sha256"]
    hc = json.loads((tmp_path / "c" / "heads.json").read_text())["heads"]["default"]["sha256"]
    assert he == hc


def _fit_cmd(out, data, env, *extra):
    return [sys.executable, "-m", "prefheads.cli", "fit", "--base", "tiny/resume", "--data", str(data), "--out",
            str(out), "--mode", "lora", "--epochs", "6", "--batch-size", "2", "--lr", "3e-3",
            "--save-every", "3", *extra]


def test_killed_run_resumes_to_the_same_head(tmp_path):
    bb, tok = make_backbone("llama")
    save_to_hub_cache(bb, tok, "tiny/resume", tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(tmp_path / "c"))
    data = _pairs_file(tmp_path / "pairs.jsonl", n=40)
    ref = subprocess.run(_fit_cmd(tmp_path / "ref", data, env), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(_fit_cmd(tmp_path / "run", data, env), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill after a few checkpoints, well before the end (108 steps)
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "heads.json").exists()  # it really died mid-way
    assert (tmp_path / "run" / "checkpoint" / "state.safetensors").is_file()
    res = subprocess.run(_fit_cmd(tmp_path / "run", data, env, "--resume"), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for sub in ("heads.json", "adapter/adapter_model.safetensors"):
        a, b = (tmp_path / "ref" / sub), (tmp_path / "run" / sub)
        if sub == "heads.json":
            sa = {k: v["sha256"] for k, v in json.loads(a.read_text())["heads"].items()}
            sb = {k: v["sha256"] for k, v in json.loads(b.read_text())["heads"].items()}
            assert sa == sb
        else:
            assert a.read_bytes() == b.read_bytes()


def test_two_process_accelerate_run(tmp_path):
    bb, tok = make_backbone("llama")
    save_to_hub_cache(bb, tok, "tiny/ddp", tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(tmp_path / "c"),
               OMP_NUM_THREADS="1")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=40)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "prefheads.cli", "fit", "--base", "tiny/ddp",
           "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "4", "--batch-size", "8", "--lr", "3e-3",
           *PAPER_ARGS]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path / "o" / "heads.json").read_text())
    assert cfg["heads"]["default"]["config"]["meta"]["val_pair_accuracy"] >= 0.8


def test_launch_that_accelerate_did_not_distribute_is_refused():
    from prefheads.training.loop import check_launch

    env = {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}
    with pytest.raises(RuntimeError, match="FSDP needs CUDA GPUs"):
        check_launch(1, "NO", env)
    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node N"):
        check_launch(1, "NO", {"WORLD_SIZE": "4"})
    with pytest.raises(RuntimeError, match="not the FSDP asked for"):  # plain data parallel instead
        check_launch(2, "MULTI_CPU", env)
    check_launch(2, "FSDP", env)
    check_launch(2, "MULTI_CPU", {"WORLD_SIZE": "2"})
    check_launch(1, "NO", {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of an FSDP launch")
def test_fsdp_launch_on_cpu_fails_clearly(tmp_path):
    bb, tok = make_backbone("llama")
    save_to_hub_cache(bb, tok, "tiny/fsdp", tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(tmp_path / "c"),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=16)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--use_fsdp", "--fsdp_version", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "prefheads.cli", "fit", "--base", "tiny/fsdp", "--data", str(data), "--out", str(tmp_path / "o"),
           "--epochs", "1", "--batch-size", "8", "--mode", "lora"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "FSDP needs CUDA GPUs" in r.stderr + r.stdout
    assert not (tmp_path / "o" / "heads.json").exists()


def test_quantized_backbones_fail_clearly_where_unsupported():
    from prefheads.loading import quantization_config

    with pytest.raises(ValueError, match="frozen or lora"):
        FitConfig(task="x", mode="full", load_in_4bit=True)
    with pytest.raises(ValueError, match="one of"):
        quantization_config(load_in_4bit=True, load_in_8bit=True)
    assert quantization_config() is None


def test_listwise_objective_learns_a_separable_set_and_selects_on_choice_accuracy(tmp_path):
    pm, res = _run(tmp_path, "lw", objective="listwise", epochs=4)
    assert res.best["val_accuracy"] == 1.0
    assert all("val_accuracy" in h and "val_pair_accuracy" in h for h in res.history)
    best = max(range(len(res.history)), key=lambda i: (res.history[i]["val_accuracy"], -i))
    assert res.best_epoch == best + 1  # the first epoch with the best validation choice accuracy


def test_listwise_rejects_the_joint_cdpo_objective():
    with pytest.raises(ValueError, match="cDPO"):
        FitConfig(task="x", objective="listwise", dpo_weight=1.0, mode="lora")
