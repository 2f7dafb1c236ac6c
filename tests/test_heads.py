"""Poolers, reward heads and head files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from conftest import make_backbone
from prefheads import POOLERS, HeadConfig, PreferenceModel, RewardHead
from prefheads.poolers import is_multi_layer
from prefheads.headio import HeadFileError, read_config


def test_swiglu_head_has_19m_parameters_at_paper_size():
    head = RewardHead(HeadConfig(pooler="swiglu", hidden_size=1536, pooler_kwargs={"ffn_dim": 4096}))
    # W1 1536x8192 + b 8192, W2 4096x1536 + b 1536, w 1536 (no bias)
    assert head.num_parameters() == 1536 * 8192 + 8192 + 4096 * 1536 + 1536 + 1536 == 18_885_632


@pytest.mark.parametrize("pooler", [p for p in POOLERS.names() if not is_multi_layer(p)])
def test_pooler_shapes_and_init(pooler):
    head = RewardHead(HeadConfig(pooler=pooler, hidden_size=16, pooler_kwargs={"ffn_dim": 24} if pooler == "swiglu" else {}))
    assert head(torch.randn(5, 16)).shape == (5,)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            assert abs(float(m.weight.detach().std()) - 0.02) < 0.01
            assert m.bias is None or torch.count_nonzero(m.bias) == 0


def test_swiglu_formula():
    head = RewardHead(HeadConfig(pooler="swiglu", hidden_size=8, dropout=0.0, pooler_kwargs={"ffn_dim": 4}))
    p = head.pooler
    h = torch.randn(3, 8)
    x, g = (h @ p.up.weight.T + p.up.bias).chunk(2, -1)
    want = torch.tanh((x * torch.nn.functional.silu(g)) @ p.down.weight.T + p.down.bias) @ head.reward.weight[0]
    assert torch.allclose(head(h), want, atol=1e-6)


def test_unknown_and_duplicate_poolers_are_errors():
    with pytest.raises(KeyError, match="swiglu"):
        HeadConfig(pooler="nope", hidden_size=4)
    with pytest.raises(ValueError):
        POOLERS.register("bert")(object)


def test_registered_pooler_trains_saves_and_loads(tmp_path):
    name = "test_scaled"
    if name not in POOLERS:
        @POOLERS.register(name)
        class Scaled(nn.Module):
            def __init__(self, hidden_size: int, scale: float = 2.0, **_):
                super().__init__()
                self.lin = nn.Linear(hidden_size, hidden_size)
                self.scale = scale

            def forward(self, h):
                return self.scale * self.lin(h)

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok)
    pm.add_head("mine", name, pooler_kwargs={"scale": 3.0})
    before = pm.score("hi", ["a", "b"])
    pm.save_heads(tmp_path / "h")
    pm2 = PreferenceModel.from_backbone(bb, tok)
    pm2.load_heads(tmp_path / "h")
    assert pm2.heads["mine"].pooler.scale == 3.0
    assert torch.equal(pm2.score("hi", ["a", "b"]), before)


def _pm_with_heads():
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    pm.add_head("glue/rte", "swiglu")
    pm.add_head("arc", "bert", activate=False)
    pm.heads["arc"].config.meta["task"] = "arc_easy"
    return pm


def test_save_load_round_trip(tmp_path):
    pm = _pm_with_heads()
    want = pm.score_all_heads("q", ["x", "y"])
    pm.save_heads(tmp_path)
    cfg = read_config(tmp_path)
    assert cfg["base"]["model_id"] == "tiny/llama" and cfg["base"]["reward_token"] == "<|im_end|>"
    assert set(cfg["heads"]) == {"glue/rte", "arc"} and cfg["active"] == "glue/rte"
    assert cfg["heads"]["arc"]["config"]["pooler"] == "bert" and "library_version" in cfg
    assert "arc_easy" in (tmp_path / "README.md").read_text()
    assert not any(p.suffix == ".pt" or p.suffix == ".bin" for p in tmp_path.iterdir())
    pm2 = PreferenceModel.from_backbone(pm.backbone, pm.tokenizer, model_id="tiny/llama")
    assert pm2.load_heads(tmp_path) == ["glue/rte", "arc"]
    got = pm2.score_all_heads("q", ["x", "y"])
    for k in want:
        assert torch.equal(got[k], want[k])
    # a single head
    pm3 = PreferenceModel.from_backbone(pm.backbone, pm.tokenizer, model_id="tiny/llama")
    pm3.load_heads(tmp_path, names=["arc"])
    assert pm3.head_names == ["arc"]


def test_corrupted_or_truncated_weights_are_clear_errors(tmp_path):
    pm = _pm_with_heads()
    pm.save_heads(tmp_path)
    f = tmp_path / read_config(tmp_path)["heads"]["arc"]["file"]
    f.write_bytes(f.read_bytes()[:-10])
    pm2 = PreferenceModel.from_backbone(pm.backbone, pm.tokenizer, model_id="tiny/llama")
    with pytest.raises(HeadFileError, match="corrupted or truncated"):
        pm2.load_heads(tmp_path)
    assert pm2.head_names == []  # all or nothing
    (tmp_path / "heads.json").write_text("{not json")
    with pytest.raises(HeadFileError, match="invalid JSON"):
        pm2.load_heads(tmp_path)
    with pytest.raises(HeadFileError, match="not found"):
        pm2.load_heads(tmp_path / "missing")


def test_other_base_is_refused_unless_overridden(tmp_path):
    pm = _pm_with_heads()
    pm.save_heads(tmp_path)
    other = PreferenceModel.from_backbone(*make_backbone("llama", seed=1), model_id="someone/else")  # other weights
    with pytest.raises(HeadFileError, match="tiny/llama.*someone/else"):
        other.load_heads(tmp_path)
    assert other.load_heads(tmp_path, allow_base_mismatch=True)
    bb, tok = make_backbone("gpt2")
    bb.config.n_embd  # same width 32 but other family: template fingerprint and id differ
    wide = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    wide.hidden_size = 64  # a width mismatch can never be overridden
    with pytest.raises(HeadFileError, match="width"):
        wide.load_heads(tmp_path, allow_base_mismatch=True)


def test_interrupted_save_keeps_the_previous_heads(tmp_path, monkeypatch):
    pm = _pm_with_heads()
    pm.save_heads(tmp_path)
    want = pm.score("q", ["x", "y"])
    with torch.no_grad():
        for p in pm.heads["glue/rte"].parameters():
            p.add_(1.0)
    real = os.replace

    def crash(src, dst):
        if str(dst).endswith("heads.json"):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        pm.save_heads(tmp_path)
    monkeypatch.setattr(os, "replace", real)
    pm2 = PreferenceModel.from_backbone(pm.backbone, pm.tokenizer, model_id="tiny/llama")
    pm2.load_heads(tmp_path)
    assert torch.equal(pm2.score("q", ["x", "y"]), want)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the next save succeeds and removes weights no longer referenced
    pm.save_heads(tmp_path)
    files = {e["file"] for e in json.loads((tmp_path / "heads.json").read_text())["heads"].values()}
    assert {p.name for p in tmp_path.glob("*.safetensors")} == files


@pytest.mark.parametrize("cast", ["bfloat16", "half"])
def test_heads_stay_fp32_when_the_model_is_cast(cast):
    pm = _pm_with_heads()
    pm.add_head("lp", "identity", score_input="logprob_mean", activate=False)
    pm.heads["arc"].fit_standardizer(torch.randn(10, 32) * 3 + 1)
    before = {n: {k: v.clone() for k, v in h.state_dict().items()} for n, h in pm.heads.items()}
    getattr(pm, "to" if cast == "bfloat16" else cast)(*([torch.bfloat16] if cast == "bfloat16" else []))
    for name, head in pm.heads.items():  # the values themselves, not rounded through the cast
        assert all(torch.equal(v, before[name][k]) for k, v in head.state_dict().items()), name
    want = torch.bfloat16 if cast == "bfloat16" else torch.float16
    assert next(pm.backbone.parameters()).dtype == want
    for name, head in pm.heads.items():
        assert {t.dtype for t in [*head.parameters(), *head.buffers()]} == {torch.float32}, name
    for name, r in pm.score_all_heads("q", ["x", "y"]).items():
        assert r.dtype == torch.float32 and torch.isfinite(r).all(), name
