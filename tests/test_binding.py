"""Heads of several folders on one backbone: frozen heads read the base model, each LoRA head its
own named adapter; every head scores as its folder does alone, whatever else is loaded."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.headio import HeadFileError, read_config
from prefheads.training import FitConfig, fit
from test_fit_cli import _pairs_file

PROMPT = "Question 3: is the fox quick?"
CANDS = ["yes, the quick brown fox", "no lazy dog", "maybe"]
TOL = 1e-5  # as tests/test_model.py's batching checks


def _pm() -> PreferenceModel:
    return PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")


def _lora(r: int = 4):
    from peft import LoraConfig

    return LoraConfig(r=r, target_modules=["q_proj", "v_proj"])


def _perturb(pm: PreferenceModel, adapter: str, seed: int) -> None:
    """Give ``adapter`` weights that change the hidden states (a trained adapter, in effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.backbone.named_parameters():
            if f"lora_B.{adapter}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two LoRA runs (seeds 1, 2), a frozen log-prob-aware run, and a folder of two heads trained
    together on one adapter (one of them log-prob-aware)."""
    root = tmp_path_factory.mktemp("folders")
    data = _pairs_file(root / "pairs.jsonl", n=40)
    runs = {"l1": dict(mode="lora", seed=1), "l2": dict(mode="lora", seed=2),
            "fz": dict(mode="frozen", seed=0, lm_score="logprob_mean")}
    for name, kw in runs.items():
        cfg = FitConfig(data=str(data), out=str(root / name), head_name=name, epochs=2, batch_size=8, lr=3e-3,
                        cache_dir=str(root / "cache"), **kw)
        fit(cfg, pm=_pm(), progress=False)
    pm = _pm()
    pm.add_head("pa", "swiglu", init_std=0.5)
    pm.add_head("pb", "identity", init_std=0.5, score_input="logprob_sum")
    pm.new_adapter("pair", _lora(), heads=["pa", "pb"])
    _perturb(pm, "pair", seed=7)
    pm.save_heads(root / "pair")
    return root


def _alone(folder, name):
    pm = _pm()
    pm.load_heads(folder)
    return pm.score(PROMPT, CANDS, head=name)


@pytest.fixture(scope="module")
def alone(folders):
    return {name: _alone(folders / f, name) for f, names in
            {"l1": ["l1"], "l2": ["l2"], "fz": ["fz"], "pair": ["pa", "pb"]}.items() for name in names}


def _close(a, b):
    return float((a - b).abs().max()) <= TOL


# ----------------------------------------------------------------------------- loading and scoring


@pytest.mark.parametrize("order", list(itertools.permutations(["l1", "l2", "fz"])), ids="-".join)
def test_every_head_scores_as_its_folder_alone_in_every_loading_order(folders, alone, order):
    from prefheads.eval import score_examples
    from prefheads.infer.scoring import encode_all, score_items
    from prefheads.types import Example

    pm = _pm()
    for f in order:
        pm.load_heads(folders / f)
    assert sorted(pm.adapter_folders) == ["l1", "l2"]  # one named adapter per LoRA folder
    assert {pm.adapter_of("l1"), pm.adapter_of("l2"), pm.adapter_of("fz")} == {"l1", "l2", None}
    every = pm.score_all_heads(PROMPT, CANDS)
    pooled = score_items(pm, encode_all(pm, [PROMPT] * 3, CANDS))
    ex = Example(id="q", prompt=[{"role": "user", "content": PROMPT}], choices=CANDS, label=0)
    table = score_examples(pm, [ex])
    for name in order:
        assert _close(pm.score(PROMPT, CANDS, head=name), alone[name]), name
        assert _close(every[name], alone[name]) and _close(pooled[name], alone[name]), name
        assert _close(torch.tensor(table.rewards[name][0]), alone[name]), name
    assert list(every) == list(pooled) == pm.head_names


def test_heads_trained_together_share_one_adapter_loaded_once(folders, alone):
    pm = _pm()
    pm.load_heads(folders / "fz")
    pm.load_heads(folders / "pair")
    pm.load_heads(folders / "l1")
    assert pm.adapter_of("pa") == pm.adapter_of("pb") == "pair"
    pm.load_heads(folders / "pair")  # again: the same adapter, not a second copy
    copy = folders.parent / "pair-copy"
    shutil.copytree(folders / "pair", copy, dirs_exist_ok=True)
    pm.load_heads(copy)  # identical adapter files elsewhere: still loaded once
    assert sorted(pm.backbone.peft_config) == ["l1", "pair"]
    every = pm.score_all_heads(PROMPT, CANDS)
    for name in ("pa", "pb", "fz", "l1"):
        assert _close(every[name], alone[name]), name  # pb adds the LM score of its adapter's pass


def test_one_pass_per_backbone_state_and_none_for_heads_not_asked(folders, monkeypatch):
    import prefheads.model.core as model

    calls = []
    real = model.extract
    monkeypatch.setattr(model, "extract", lambda *a, **k: calls.append(k["logprobs"]) or real(*a, **k))
    frozen = _pm()
    frozen.load_heads(folders / "fz")
    frozen.add_head("more", "bert")
    frozen.score_all_heads(PROMPT, CANDS)
    assert len(calls) == 1 and not hasattr(frozen.backbone, "peft_config")  # no adapter: one plain pass
    pm = _pm()
    for f in ("l1", "fz", "pair", "l2"):
        pm.load_heads(folders / f)
    calls.clear()
    pm.score_all_heads(PROMPT, CANDS)
    assert len(calls) == 4
    assert sorted(calls) == [False, False, True, True]  # log-probs only where a head adds the LM score
    calls.clear()
    pm.score(PROMPT, CANDS, head="l2")
    assert calls == [False]


@pytest.mark.parametrize("use_peft_api", [False, True], ids=["switches", "peft-api"])
def test_scoring_leaves_the_backbone_as_it_was(folders, use_peft_api, monkeypatch):
    import prefheads.model.states as model
    from prefheads.binding import reading

    monkeypatch.setattr(model, "reading", lambda m, a: reading(m, a, use_peft_api=use_peft_api))
    pm = _pm()
    for f in ("l1", "fz", "l2"):
        pm.load_heads(folders / f)
    active = pm.backbone.active_adapter
    grads = {n: p.requires_grad for n, p in pm.backbone.named_parameters()}

    def unchanged():
        status = pm.backbone.get_model_status()  # what every LoRA layer says
        # adapters rest disabled: outside a pass the backbone computes the base model
        assert status.enabled is False and status.active_adapters == [active] == [pm.backbone.active_adapter]
        assert {n: p.requires_grad for n, p in pm.backbone.named_parameters()} == grads

    pm.score_all_heads(PROMPT, CANDS)
    unchanged()
    for state in (None, "l2"):
        with pytest.raises(RuntimeError, match="inside"):
            with pm.reading(state):
                raise RuntimeError("inside")
        unchanged()


def test_switching_layers_equals_peft_api(folders):
    from prefheads.binding import reading

    pm = _pm()
    for f in ("l1", "l2"):
        pm.load_heads(folders / f)
    for state in (None, "l1", "l2"):
        got = []
        for api in (False, True):
            with reading(pm.backbone, state, use_peft_api=api):
                got.append(pm.features([PROMPT] * 3, CANDS, layers=[0, -1], logprobs=True))
        fast, ref = got
        assert all(torch.equal(fast.states[l], ref.states[l]) for l in (0, -1)), state
        assert torch.equal(fast.logprob_sum, ref.logprob_sum), state
    with reading(pm.backbone, "l1"):
        a = pm.features([PROMPT] * 3, CANDS).states[-1]
    with reading(pm.backbone, "l2"):
        b = pm.features([PROMPT] * 3, CANDS).states[-1]
    assert not torch.allclose(a, b)  # the two adapters differ: equality above is not vacuous


def test_a_head_added_beside_adapters_reads_the_active_one_and_replaced_adapters_go(folders):
    pm = _pm()
    pm.add_head("mine", "identity")  # on the plain backbone
    pm.load_heads(folders / "l1")
    assert pm.adapter_of("mine") is None  # loading an adapter does not change what it reads
    pm.add_head("later", "identity")
    assert pm.adapter_of("later") == "l1"
    pm.remove_head("later")
    pm.remove_head("l1")
    assert not hasattr(pm.backbone, "peft_config")  # no head reads an adapter: the plain model again
    assert pm.adapter_folders == {}


def test_a_lora_folder_whose_save_stopped_before_heads_json_is_refused_not_mixed(tmp_path, monkeypatch):
    """A re-save writes the adapter, then swaps heads.json: stopped in between, the folder holds
    the old heads beside the new adapter. Loading it must fail, naming the adapter, not mix them."""
    import os

    from prefheads import headio

    pm = _pm()
    pm.add_head("h", "swiglu", init_std=0.5)
    pm.new_adapter("run", _lora(), heads=["h"])
    _perturb(pm, "run", seed=1)
    pm.save_heads(tmp_path)
    assert read_config(tmp_path)["heads"]["h"]["adapter_sha256"]
    again = _pm()
    again.load_heads(tmp_path)  # a finished save loads
    assert _close(again.score(PROMPT, CANDS), pm.score(PROMPT, CANDS))
    _perturb(pm, "run", seed=2)  # trained further
    real = os.replace

    def stop_at_heads_json(src, dst):
        if str(dst).endswith(headio.CONFIG):
            raise OSError("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", stop_at_heads_json)
    with pytest.raises(OSError, match="killed"):
        pm.save_heads(tmp_path)
    monkeypatch.undo()
    with pytest.raises(HeadFileError, match=r"adapter's files do not match what heads.json records for head 'h'"):
        _pm().load_heads(tmp_path)
    pm.save_heads(tmp_path)  # saving again repairs it
    again = _pm()
    again.load_heads(tmp_path)
    assert _close(again.score(PROMPT, CANDS), pm.score(PROMPT, CANDS))


def test_an_adapter_replaced_under_the_same_name_on_other_modules_is_switched(tmp_path):
    """Pruning an adapter and loading another of the same folder name (other target modules)
    must switch the new adapter's layers, not a stale list of the old one's."""
    from peft import LoraConfig

    def folder(path, head, targets, seed):
        pm = _pm()
        pm.add_head(head, "identity", init_std=0.5)
        pm.new_adapter("x", LoraConfig(r=4, target_modules=targets), heads=[head])
        _perturb(pm, "x", seed)
        pm.save_heads(path)

    folder(tmp_path / "A", "ha", ["q_proj", "v_proj"], 1)
    folder(tmp_path / "one" / "B", "hb", ["q_proj", "v_proj"], 2)
    folder(tmp_path / "two" / "B", "hb2", ["o_proj", "down_proj"], 3)
    alone = _pm()
    alone.load_heads(tmp_path / "two" / "B")
    want = alone.score(PROMPT, CANDS)
    pm = _pm()
    pm.load_heads(tmp_path / "A")  # stays loaded: the backbone remains the same PeftModel
    pm.load_heads(tmp_path / "one" / "B")
    pm.score_all_heads(PROMPT, CANDS)  # the switchable layers of adapters A and B (q, v) are listed
    pm.remove_head("hb")
    pm.load_heads(tmp_path / "two" / "B")
    assert pm.adapter_of("hb2") == "B" and sorted(pm.backbone.peft_config) == ["A", "B"]
    assert _close(pm.score_all_heads(PROMPT, CANDS)["hb2"], want)


# ----------------------------------------------------------------------------- full fine-tunes


@pytest.fixture(scope="module")
def full(folders):
    """A full fine-tuning folder: its heads read the tuned backbone saved beside them."""
    pm = _pm()
    with torch.no_grad():
        for p in pm.backbone.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    pm.add_head("ft", "swiglu")
    out = folders / "full"
    pm.backbone.save_pretrained(out / "backbone")
    pm.tokenizer.save_pretrained(out / "backbone")
    pm.fine_tuned = "backbone"
    pm.save_heads(out)
    return out, pm.score(PROMPT, CANDS)


def test_a_full_fine_tune_folder_is_refused_beside_other_folders(folders, full):
    out, want = full
    tuned = PreferenceModel.from_pretrained(str(out / "backbone"), heads=out)
    assert _close(tuned.score(PROMPT, CANDS), want)  # alone on its own backbone, as always
    for other in ("fz", "l1"):
        with pytest.raises(HeadFileError, match=rf"{folders / other}.*{out}.*--mode full"):
            tuned.load_heads(folders / other, allow_base_mismatch=True)
        pm = _pm()
        pm.load_heads(folders / other)
        with pytest.raises(HeadFileError, match=rf"{out}.*--mode full.*{folders / other}"):
            pm.load_heads(out, allow_base_mismatch=True)
        assert pm.head_names == [other]
    tuned.load_heads(out)  # the same folder again is no mix
    assert tuned.head_names == ["ft"]


# ----------------------------------------------------------------------------- files


def test_heads_of_several_folders_save_into_one_folder_with_each_adapter(folders, alone, tmp_path):
    pm = _pm()
    for f in ("l1", "fz", "l2"):
        pm.load_heads(folders / f)
    pm.save_heads(tmp_path)
    config = read_config(tmp_path)
    assert config["format_version"] == 2 and config["base"]["adapter"] is None
    assert {n: e["adapter"] for n, e in config["heads"].items()} == {"l1": "adapter/l1", "fz": None,
                                                                     "l2": "adapter/l2"}
    card = (tmp_path / "README.md").read_text()
    assert "| l1 | LoRA adapter `adapter/l1/` |" in card and "| fz | base model |" in card
    fresh = _pm()
    fresh.load_heads(tmp_path)
    for name in ("l1", "fz", "l2"):
        assert _close(fresh.score(PROMPT, CANDS, head=name), alone[name]), name
    assert _pm().read_head(tmp_path, "fz").config.score_input == "logprob_mean"
    with pytest.raises(HeadFileError, match="changed backbone"):
        _pm().read_head(tmp_path, "l1")
    one = read_config(folders / "l1")  # a single LoRA run: format 1, as prefheads before read it
    assert one["format_version"] == 1 and one["base"]["adapter"] == one["heads"]["l1"]["adapter"] == "adapter"
    assert "| l1 | LoRA adapter `adapter/` |" in (folders / "l1" / "README.md").read_text()


def test_folders_written_before_heads_named_their_adapter_still_load(folders, alone, tmp_path):
    shutil.copytree(folders / "l1", tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "heads.json").read_text())
    del cfg["heads"]["l1"]["adapter"]  # only base.adapter, as older prefheads wrote
    (tmp_path / "old" / "heads.json").write_text(json.dumps(cfg))
    pm = _pm()
    pm.load_heads(folders / "l2")
    pm.load_heads(tmp_path / "old")
    assert _close(pm.score(PROMPT, CANDS, head="l1"), alone["l1"])


def test_an_adapter_outside_the_folder_is_refused(folders, tmp_path):
    shutil.copytree(folders / "l1", tmp_path / "f")
    cfg = json.loads((tmp_path / "f" / "heads.json").read_text())
    cfg["heads"]["l1"]["adapter"] = "../elsewhere"
    (tmp_path / "f" / "heads.json").write_text(json.dumps(cfg))
    pm = _pm()
    with pytest.raises(HeadFileError, match="outside the head folder"):
        pm.load_heads(tmp_path / "f")
    assert pm.head_names == [] and not hasattr(pm.backbone, "peft_config")


# ----------------------------------------------------------------------------- training beside loaded heads


def test_a_new_adapter_trains_without_disturbing_loaded_ones(folders, alone, tmp_path):
    pm = _pm()
    pm.load_heads(folders / "l1")
    pm.load_heads(folders / "fz")
    before = {n: p.detach().clone() for n, p in pm.backbone.named_parameters()}
    pm.add_head("new", "swiglu")
    pm.new_adapter("new", _lora(), heads=["new"])  # what a LoRA run does on a model holding adapters
    trainable = {n for n, p in pm.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".new." in n for n in trainable)
    start = {n: p.detach().clone() for n, p in pm.backbone.named_parameters() if n in trainable}
    params = [p for p in pm.backbone.parameters() if p.requires_grad] + list(pm.heads["new"].parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        f = pm.features([PROMPT] * 3, CANDS, layers=[-1], grad=True)
        loss = -torch.log_softmax(pm(f, "new"), 0)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(start[n], p) for n, p in pm.backbone.named_parameters() if n in start)
    assert all(torch.equal(before[n], p) for n, p in pm.backbone.named_parameters() if n in before)
    for name in ("l1", "fz"):
        assert _close(pm.score(PROMPT, CANDS, head=name), alone[name]), name
    want = pm.score(PROMPT, CANDS, head="new")
    pm.save_heads(tmp_path, names=["new"])
    assert read_config(tmp_path)["heads"]["new"]["adapter"] == "adapter"
    assert _close(_alone(tmp_path, "new"), want)


def test_a_lora_run_beside_a_loaded_frozen_folder(folders, alone, tmp_path):
    pm = _pm()
    pm.load_heads(folders / "fz")
    cfg = FitConfig(data=str(folders / "pairs.jsonl"), out=str(tmp_path / "run"), mode="lora", head_name="run",
                    epochs=1, batch_size=8, lr=3e-3)
    fit(cfg, pm=pm, progress=False)
    assert _close(pm.score(PROMPT, CANDS, head="fz"), alone["fz"])
    want = pm.score(PROMPT, CANDS, head="run")
    assert _close(_alone(tmp_path / "run", "run"), want)
    assert read_config(tmp_path / "run")["heads"]["run"]["adapter"] == "adapter"


def test_a_lora_run_beside_a_loaded_lora_folder(folders, alone, tmp_path):
    pm = _pm()
    pm.load_heads(folders / "l1")
    cfg = FitConfig(data=str(folders / "pairs.jsonl"), out=str(tmp_path / "run"), mode="lora", head_name="run",
                    epochs=1, batch_size=8, lr=3e-3)
    fit(cfg, pm=pm, progress=False)
    assert _close(pm.score(PROMPT, CANDS, head="l1"), alone["l1"])
    assert _close(_alone(tmp_path / "run", "run"), pm.score(PROMPT, CANDS, head="run"))


# ----------------------------------------------------------------------------- the LM itself


def test_log_prob_and_sampling_are_the_base_models(folders):
    from prefheads.eval import score_examples
    from prefheads.infer.rerank import generate_candidates
    from prefheads.types import Example

    ex = [Example(id="q", prompt=[{"role": "user", "content": PROMPT}], choices=CANDS, label=0)]
    plain = _pm()
    pm = _pm()
    pm.load_heads(folders / "l1")
    assert torch.allclose(torch.tensor(score_examples(pm, ex).logprob), torch.tensor(score_examples(plain, ex, heads=[]).logprob))
    with pm.reading("l1"):  # the adapter does change the LM's scores: the check above can fail
        adapted = pm.features([PROMPT] * 3, CANDS, logprobs=True).logprob_sum
    assert not torch.allclose(adapted, plain.features([PROMPT] * 3, CANDS, logprobs=True).logprob_sum)
    kw = dict(n=2, max_new_tokens=6, temperature=1.0, seed=3)
    assert [g.text for g in generate_candidates(pm, PROMPT, **kw)] == \
        [g.text for g in generate_candidates(plain, PROMPT, **kw)]


def test_the_callers_own_model_stays_the_base_model_after_lora_folders_load(folders, alone):
    """peft injects adapter layers into the model object the caller passed in: they rest
    disabled, so that object's logits and generations are the base model's, before and after
    scoring through either switch, while each LoRA head still reads its adapter."""
    from prefheads.binding import reading

    model, tok = make_backbone("llama")
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        logits, sample = model(input_ids=ids).logits, model.generate(ids, **gen)
    pm = PreferenceModel.from_backbone(model, tok, model_id="tiny/llama")
    for f in ("l1", "fz", "pair"):
        pm.load_heads(folders / f)
    assert "lora" in type(model.model.layers[0].self_attn.q_proj).__module__  # injected in place

    def base_model_still():
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, logits)
            assert torch.equal(model.generate(ids, **gen), sample)

    base_model_still()
    got = pm.score_all_heads(PROMPT, CANDS)
    assert all(_close(got[h], alone[h]) for h in ("l1", "fz", "pa", "pb"))
    base_model_still()
    for api in (False, True):
        for state in (None, "l1"):
            with reading(pm.backbone, state, use_peft_api=api):
                pass
            base_model_still()
    with pm.reading("l1"):  # the adapter is there and does change the model inside a pass
        with torch.no_grad():
            assert not torch.allclose(model(input_ids=ids).logits, logits)


# ----------------------------------------------------------------------------- serving


def test_serve_three_folders_answers_each_head(folders, alone, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from prefheads.cli import app

    base = tmp_path / "base"
    bb, tok = make_backbone("llama")
    bb.save_pretrained(base)
    tok.save_pretrained(base)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app))
    for batching in ("--batching", "--no-batching"):
        args = ["serve", "--heads", str(folders / "l1"), "--heads", str(folders / "fz"), "--heads",
                str(folders / "l2"), "--base", str(base), batching]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        c = TestClient(seen["app"])
        listed = {h["name"]: (h["adapter"], h["folder"]) for h in c.get("/heads").json()["heads"]}
        assert listed == {"l1": ("l1", str((folders / "l1").resolve())), "fz": (None, str((folders / "fz").resolve())),
                          "l2": ("l2", str((folders / "l2").resolve()))}
        assert c.get("/heads").json()["active"] == "l1"  # the first folder's
        for name in ("l1", "fz", "l2"):
            body = c.post("/score", json={"prompt": PROMPT, "candidates": CANDS, "head": name}).json()
            got = [0.0] * 3
            for x in body["ranked"]:
                got[x["index"]] = x["reward"]
            assert body["head"] == name and _close(torch.tensor(got), alone[name]), name
            assert set(body["ranked"][0]["rewards"]) == {name}  # one pass: the heads of its state only
            docs = c.post("/v1/rerank", json={"model": name, "query": PROMPT, "documents": CANDS}).json()
            got = [0.0] * 3
            for x in docs["results"]:
                got[x["index"]] = x["relevance_score"]
            assert _close(torch.tensor(got), alone[name]), name
        seen["app"].state.scorer.close()


def test_serving_two_folders_with_the_same_head_name_is_refused(folders, tmp_path):
    from prefheads.cli import app
    from typer.testing import CliRunner

    shutil.copytree(folders / "l1", tmp_path / "again")
    res = CliRunner().invoke(app, ["serve", "--heads", str(folders / "l1"), "--heads", str(tmp_path / "again")])
    assert res.exit_code != 0 and "head 'l1' is in both" in res.output


def test_pooled_requests_of_different_heads_each_get_their_own_state(folders, alone, monkeypatch):
    import threading

    import prefheads.infer.batching as batching
    from prefheads.infer.batching import BatchSettings, Batcher

    pm = _pm()
    for f in ("l1", "fz", "l2"):
        pm.load_heads(folders / f)
    groups = []
    real = batching.score_items
    monkeypatch.setattr(batching, "score_items", lambda pm, items, heads, **kw: groups.append(
        (list(heads), len(items))) or real(pm, items, heads=heads, **kw))
    b = Batcher(pm, BatchSettings(max_wait_ms=0))
    gate, started = threading.Event(), threading.Event()
    b.call(lambda: (started.set(), gate.wait(30)))
    assert started.wait(30)
    asked = ["fz", "l2", "fz", None]  # None: every head
    futs = [b.submit([PROMPT] * 3, CANDS, None if h is None else [h]) for h in asked]
    gate.set()
    results = [f.result(60) for f in futs]
    b.close()
    for h, got in zip(asked, results):
        assert list(got.rewards) == ([h] if h else ["l1", "fz", "l2"])
        for name, r in got.rewards.items():
            assert _close(torch.tensor(r), alone[name]), (h, name)
    # one pooled pass per state, over the requests that need it
    assert sorted(groups) == [(["fz"], 9), (["l1"], 3), (["l2"], 6)]
