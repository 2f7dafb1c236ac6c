"""4/8-bit backbones (bitsandbytes, CPU backend): load, score, train, save and reload on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.training import FitConfig, fit
from test_fit_cli import _pairs_file

pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")

from prefheads.loading import quantization_kwargs, quantization_of  # noqa: E402

# every fit option a result depends on, given here: the defaults may change
FIT = dict(epochs=3, batch_size=8, lr=3e-3, pooler="swiglu", layer="-1", lm_score="none", objective="separable",
           template="paper", dropout=0.0, seed=0)
KINDS = {"8bit": ("bnb-8bit", dict(load_in_8bit=True)), "4bit": ("bnb-4bit-nf4", dict(load_in_4bit=True))}
Q = ["Question 3: is the fox quick?"] * 2
A = ["yes, the quick brown fox", "no lazy dog"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny llama saved as a model folder: quantized on load, as a hub download would be."""
    path = tmp_path_factory.mktemp("tiny-llama")
    bb, tok = make_backbone("llama")
    bb.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _load(folder, kind=None):
    flags = KINDS[kind][1] if kind else {}
    return PreferenceModel.from_pretrained(str(folder), **quantization_kwargs(**flags))


def _fit(pm, tmp_path, name, kind, mode):
    cfg = FitConfig(data=str(_pairs_file(tmp_path / "pairs.jsonl")), out=str(tmp_path / name), mode=mode,
                    cache_dir=str(tmp_path / "cache"), **KINDS[kind][1], **FIT)
    return fit(cfg, pm=pm, progress=False)


@pytest.mark.parametrize("kind", list(KINDS))
def test_quantized_backbone_loads_and_scores_close_to_float32(folder, kind):
    plain, quant = _load(folder), _load(folder, kind)
    assert quantization_of(plain.backbone) is None and quantization_of(quant.backbone) == KINDS[kind][0]
    for pm in (plain, quant):
        pm.add_head("h", "swiglu", init_std=0.5)
    quant.heads["h"].load_state_dict(plain.heads["h"].state_dict())
    fp, q = plain.features(Q, A).states[-1], quant.features(Q, A).states[-1]
    # a random tiny model has no outlier structure to keep: quantisation error is large but bounded
    assert torch.isfinite(q).all() and not torch.equal(fp, q)
    assert torch.nn.functional.cosine_similarity(fp, q, dim=-1).min() > 0.9
    assert torch.isfinite(quant.score(Q, A)).all()


@pytest.mark.parametrize("kind,mode", [("8bit", "frozen"), ("4bit", "frozen"), ("4bit", "lora"), ("8bit", "lora")])
def test_head_round_trip_on_its_quantized_base_and_refusal_of_float32(folder, tmp_path, kind, mode):
    from prefheads.headio import HeadFileError

    pm = _load(folder, kind)
    packed = {k: v.clone() for k, v in pm.backbone.state_dict().items()}
    res = _fit(pm, tmp_path, f"{kind}-{mode}", kind, mode)
    assert res.best["val_pair_accuracy"] == 1.0
    out = tmp_path / f"{kind}-{mode}"
    assert json.loads((out / "heads.json").read_text())["base"]["quantization"] == KINDS[kind][0]
    base = pm.backbone.get_base_model() if mode == "lora" else pm.backbone
    assert all(torch.equal(packed[k], v) for k, v in base.state_dict().items() if k in packed)  # base untouched
    if mode == "lora":
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    again = _load(folder, kind)
    again.load_heads(out)
    assert torch.equal(again.score(Q, A), pm.score(Q, A))
    with pytest.raises(HeadFileError, match=f"quantization: trained on a {KINDS[kind][0]} backbone"):
        _load(folder).load_heads(out)
    other = "4bit" if kind == "8bit" else "8bit"
    with pytest.raises(HeadFileError, match="quantization"):
        _load(folder, other).load_heads(out)
    told = _load(folder)
    told.load_heads(out, allow_base_mismatch=True)  # told: the float32 base reads close, not equal, features
    assert torch.isfinite(told.score(Q, A)).all()


def test_feature_cache_is_keyed_by_quantization(folder):
    from prefheads.training.cache import feature_key

    items = _load(folder).encode(Q, A)
    keys = {kind: feature_key(_load(folder, kind).backbone, items, "float32") for kind in (None, *KINDS)}
    assert len(set(keys.values())) == 3  # an 8-bit cache never serves a 4-bit or float32 run
    assert keys[None] == feature_key(_load(folder).backbone, items, "float32")


def test_frozen_features_cached_per_quantization(folder, tmp_path):
    first = _fit(_load(folder, "4bit"), tmp_path, "a", "4bit", "frozen")
    other = _fit(_load(folder, "8bit"), tmp_path, "b", "8bit", "frozen")
    again = _fit(_load(folder, "4bit"), tmp_path, "c", "4bit", "frozen")
    assert not first.cache_hit and not other.cache_hit and again.cache_hit


def test_cli_loads_the_base_as_the_heads_were_trained(folder, tmp_path):
    from typer.testing import CliRunner

    from prefheads.cli import app

    _fit(_load(folder, "4bit"), tmp_path, "h", "4bit", "frozen")
    args = ["score", "--heads", str(tmp_path / "h"), "--base", str(folder), "--prompt", Q[0], "--json"]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--candidate", A[0], "--candidate", A[1]])
    assert res.exit_code == 0, res.output
    want = _load(folder, "4bit")
    want.load_heads(tmp_path / "h")
    got = {r["candidate"]: r["reward"] for r in json.loads(res.output)}
    assert got == pytest.approx(dict(zip(A, want.score(Q, A).tolist())), abs=1e-6)
    res = runner.invoke(app, [*args, "--candidate", A[0], "--no-load-in-4bit"])
    assert res.exit_code != 0 and "load it with --load-in-4bit" in str(res.exception)
    res = runner.invoke(app, [*args, "--candidate", A[0], "--no-load-in-4bit", "--allow-base-mismatch"])
    assert res.exit_code == 0, res.output


def test_quantized_fit_options_are_checked():
    with pytest.raises(ValueError, match="frozen or lora"):
        FitConfig(task="x", mode="full", load_in_8bit=True)
    with pytest.raises(ValueError, match="one of"):
        FitConfig(task="x", load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ValueError, match="not with load_in_4bit"):
        FitConfig(task="x", mode="lora", load_in_4bit=True, fsdp=True)
