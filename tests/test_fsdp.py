"""Sharded training (torch FSDP2, gloo) on 2 CPU processes: the same head and backbone as one
process with the same global batch, and a killed sharded run resumes to the same result."""

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
from safetensors.torch import load_file

from conftest import _cfg, make_tokenizer, save_to_hub_cache
from prefheads.training import FitConfig
from test_fit_cli import _pairs_file

# |one process - two processes| for every saved tensor. Gradients are summed in another order
# (two half-batch sums, then the reduce-scatter), so float32 rounding differs from the first
# step on and AdamW carries it; observed up to 2e-5 after 20 steps at lr 3e-3, while training
# moves weights by 1e-2 and more.
TOL = 1e-4
# every option a result depends on, given here: the fit defaults may change. No dropout (each
# process draws its own masks), no validation split (the last epoch is the result), each
# sequence encoded whole in both runs (the same maths, summed in the same order).
COMMON = ["--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--pooler", "swiglu", "--layer=-1",
          "--lm-score", "none", "--objective", "separable", "--template", "paper", "--dropout", "0",
          "--val-fraction", "0", "--no-shared-prefix", "--seed", "0", "--save-every", "2"]
MODES = {"full": ["--mode", "full", "--dpo-weight", "0.5"],  # cDPO: the tied LM head runs sharded too
         "lora": ["--mode", "lora", "--lora-dropout", "0"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny llama with tied embeddings (as SmolLM2) in an offline hub cache, and pairs to fit."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("fsdp")
    tok = make_tokenizer()
    cfg = _cfg("llama", len(tok))
    cfg.tie_word_embeddings, cfg.pad_token_id, cfg.eos_token_id = True, tok.pad_token_id, tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    snap = save_to_hub_cache(model, tok, "tiny/tied", root / "hf")
    env = dict(os.environ, HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(root / "cache"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return {"root": root, "env": env, "data": _pairs_file(root / "pairs.jsonl", n=40), "start": snap, "runs": {}}


def _cmd(setup, procs: int, mode: str, out: Path, *extra: str) -> list[str]:
    fit = ["-m", "prefheads.cli", "fit", "--base", "tiny/tied", "--data", str(setup["data"]), "--out", str(out),
           *COMMON, *MODES[mode], *extra]
    if procs == 1:
        return [sys.executable, *fit]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), *fit, "--fsdp"]


def _run(setup, procs: int, mode: str) -> Path:
    """The output folder of one finished run (each configuration runs once per module)."""
    key = (procs, mode)
    if key not in setup["runs"]:
        out = setup["root"] / f"{mode}-{procs}"
        r = subprocess.run(_cmd(setup, procs, mode, out), env=setup["env"], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        setup["runs"][key] = out
    return setup["runs"][key]


def _saved(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor a run saved: its heads, and its backbone or adapter."""
    heads = json.loads((out / "heads.json").read_text())["heads"]
    got = {f"head.{n}.{k}": v for n, e in heads.items() for k, v in load_file(str(out / e["file"])).items()}
    for sub in ("backbone/model.safetensors", "adapter/adapter_model.safetensors"):
        if (out / sub).is_file():
            got.update({f"{sub}:{k}": v for k, v in load_file(str(out / sub)).items()})
    return got


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_process_fsdp_fit_equals_one_process(setup, mode):
    one, two = _saved(_run(setup, 1, mode)), _saved(_run(setup, 2, mode))
    diff = _max_diff(one, two)
    print(f"{mode}: max |one process - two processes| = {diff:.2g}")  # shown by pytest -rP
    assert diff <= TOL
    if mode == "full":  # the comparison means something: training moved the weights far more
        start = load_file(str(setup["start"] / "model.safetensors"))
        moved = {k: v for k, v in one.items() if k.startswith("backbone/")}
        assert max(float((v - start[k.split(":", 1)[1]]).abs().max()) for k, v in moved.items()) > 100 * TOL
        assert not any("lm_head" in k for k in moved)  # still tied: saved once, as the embeddings
    else:
        assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 100 * TOL


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun's workers outlive their parent)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the launcher's workers through /proc")
def test_killed_sharded_run_resumes_to_the_same_result(setup):
    ref = _saved(_run(setup, 2, "full"))
    out = setup["root"] / "killed"
    proc = subprocess.Popen(_cmd(setup, 2, "full", out), env=setup["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics, state = out / "metrics.jsonl", out / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # after a few checkpoints, well before the end (20 steps)
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7 and state.is_file():
            break
        time.sleep(0.05)
    _kill_tree(proc.pid)
    proc.wait()
    assert not (out / "heads.json").exists()  # it really died mid-way
    assert json.loads(state.read_text())["step"] < 20
    r = subprocess.run(_cmd(setup, 2, "full", out, "--resume"), env=setup["env"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the checkpoint holds full tensors; each process takes its shards back: nothing is rounded
    assert _max_diff(ref, _saved(out)) == 0.0


def test_fsdp_options_are_checked():
    with pytest.raises(ValueError, match="lora or full mode"):
        FitConfig(task="x", mode="frozen", fsdp=True)
    FitConfig(task="x", mode="full", fsdp=True)


def test_weightless_copy_takes_full_weights_and_keeps_ties():
    from transformers import AutoModelForCausalLM

    from prefheads.training.sharding import _aliases, _load_plain, _weightless_copy

    tok = make_tokenizer()
    cfg = _cfg("llama", len(tok))
    cfg.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(cfg)
    (copy,) = _weightless_copy([model])
    assert all(p.is_meta for p in copy.parameters()) and model.lm_head.weight.device.type == "cpu"
    assert _aliases(model) == [["model.embed_tokens.weight", "lm_head.weight"]]
    _load_plain(copy, {k: v + 1 for k, v in model.state_dict().items()}, _aliases(model))
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert torch.equal(copy.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight + 1)
