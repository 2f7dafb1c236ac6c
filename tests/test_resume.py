"""Resuming a killed training run: it ends where an uninterrupted one does (head, history, metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import PAPER_HEAD, make_backbone
from prefheads import PreferenceModel
from prefheads.training import FitConfig, fit, loop
from test_fit_cli import _pairs_file


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing in fit may catch it)."""


def _pm() -> PreferenceModel:
    bb, tok = make_backbone("llama")
    return PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")


def _opts(tmp_path: Path, n: int = 20, **kw) -> dict:
    data = _pairs_file(tmp_path / "pairs.jsonl", n=n)
    return {"data": str(data), "epochs": 3, "batch_size": 4, "lr": 3e-3, "cache_dir": str(tmp_path / "cache"),
            **PAPER_HEAD, **kw}


def _head(pm: PreferenceModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pm.heads["default"].state_dict().items()}


def _fit(tmp_path: Path, name: str, **opts):
    pm = _pm()
    return pm, fit(FitConfig(out=str(tmp_path / name), **opts), pm=pm, progress=False)


def _kill_after_checkpoint(monkeypatch, epoch: int, batch: int = 0) -> None:
    """Die right after the checkpoint of (epoch, batch) is written."""
    real = loop.save_checkpoint

    def dying(directory, **kw):
        real(directory, **kw)
        if (kw["info"]["epoch"], kw["info"]["batch"]) == (epoch, batch):
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", dying)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("left", ["temporary folder", "checkpoint.old"])
def test_run_killed_while_writing_a_checkpoint_resumes(tmp_path, monkeypatch, left):
    opts = _opts(tmp_path)
    ref, _ = _fit(tmp_path, "ref", **opts)
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, epoch=2)
        with pytest.raises(Killed):
            _fit(tmp_path, "run", **opts)
    run = tmp_path / "run"
    # killed while writing the next checkpoint: its temporary folder is left half-written, or the
    # swap stopped between its two renames (the previous checkpoint set aside as checkpoint.old)
    tmp = run / ".checkpoint.tmp-x1y2z3"
    tmp.mkdir()
    (tmp / "state.safetensors").write_bytes(b"\0" * 10)
    if left == "checkpoint.old":
        (run / "checkpoint").rename(run / "checkpoint.old")
    res, _ = _fit(tmp_path, "run", resume=True, **opts)
    assert _same(_head(ref), _head(res))
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == []


@pytest.mark.parametrize("accum", [2, 3])
def test_grad_accum_that_does_not_divide_the_epoch_resumes_to_the_same_head(tmp_path, monkeypatch, accum):
    opts = _opts(tmp_path, grad_accum=accum)  # 18 training pairs: 5 batches of 4 per epoch
    ref, _ = _fit(tmp_path, "ref", **opts)
    # each epoch ends on an optimizer step: its last micro-batches are never carried into the next
    steps = [json.loads(line)["step"] for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 3 * 5 and steps[4::5] == {2: [3, 6, 9], 3: [2, 4, 6]}[accum]
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, epoch=2)
        with pytest.raises(Killed):
            _fit(tmp_path, "run", **opts)
    res, _ = _fit(tmp_path, "run", resume=True, **opts)
    assert _same(_head(ref), _head(res))


def test_mid_epoch_resume_reports_the_epoch_and_its_steps_once(tmp_path, monkeypatch):
    opts = _opts(tmp_path, epochs=2, save_every=2)
    ref, a = _fit(tmp_path, "ref", **opts)
    real = loop.train

    def dies_after_step_3(trainable, trg, vag, cfg, out, on_step=None, **kw):
        def step(m):
            on_step(m)
            if m["step"] == 3:  # one step after the step-2 checkpoint, mid-epoch
                raise Killed
        return real(trainable, trg, vag, cfg, out, step, **kw)

    with monkeypatch.context() as m:
        m.setattr(loop, "train", dies_after_step_3)
        with pytest.raises(Killed):
            _fit(tmp_path, "run", **opts)
    res, b = _fit(tmp_path, "run", resume=True, **opts)
    assert _same(_head(ref), _head(res))
    for ra, rb in zip(a.history, b.history, strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == (tmp_path / "ref" / "metrics.jsonl").read_bytes()


def test_budget_capped_run_resumes_on_the_data_it_started_with(tmp_path, monkeypatch):
    from prefheads.training import budget

    real = budget.estimate_pass
    minutes = {"pass": 1.0}  # what a full backbone pass is timed at: half of it fits the budget

    def timed(pm, items, logprobs, sample=16):
        est = real(pm, items, logprobs, sample)
        est.tokens_per_second = est.tokens / 60.0 / minutes["pass"]
        return est

    monkeypatch.setattr(budget, "estimate_pass", timed)
    opts = _opts(tmp_path, n=60, batch_size=8, time_budget=0.5, val_fraction=0.0)
    ref, a = _fit(tmp_path, "ref", **opts)
    assert a.data["budget"]["examples_used"] == 30
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, epoch=2)
        with pytest.raises(Killed):
            _fit(tmp_path, "run", **opts)
    minutes["pass"] = 1.25  # the machine is busier when the run resumes
    res, b = _fit(tmp_path, "run", resume=True, **opts)
    assert b.data == a.data and b.n_train == a.n_train
    assert _same(_head(ref), _head(res))
