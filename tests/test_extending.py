"""Extending prefheads: a training mode or a pooler is one class and one registration; poolers and
losses of an installed package arrive through entry points, anything else through --plugin.

The plugin package is a throwaway: its code and the dist-info an installer would write, put on
the path (no pip install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from conftest import make_backbone
from prefheads import POOLERS, PreferenceModel
from prefheads.poolers import build_pooler
from prefheads.training import MODES, FitConfig, fit
from prefheads.training.strategies import FullTrainable, Trainable
from test_fit_cli import _pairs_file


# ----------------------------------------------------------------------------- a training mode
class NormTuning(Trainable):
    """The head and the backbone's norm weights train; everything else stays as it was."""

    quantized = False
    save = FullTrainable.save  # the tuned backbone is saved beside the heads

    def setup(self) -> None:
        self.backbone = self.pm.backbone
        for name, p in self.backbone.named_parameters():
            p.requires_grad_("norm" in name)


def test_a_new_training_mode_is_one_class_and_one_registration(tmp_path, request):
    MODES.register("norms")(NormTuning)
    # for this test only: no other test sees a fourth mode in its messages
    request.addfinalizer(lambda: MODES._items.pop("norms"))
    bb, tok = make_backbone("llama")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    cfg = FitConfig(data=str(_pairs_file(tmp_path / "pairs.jsonl", n=40)), out=str(tmp_path / "o"), mode="norms",
                    epochs=3, batch_size=8, lr=3e-3)
    assert cfg.head_dropout == 0.1  # the mode trains the backbone: FitConfig asked MODES
    res = fit(cfg, pm=pm, progress=False)
    changed = {k for k, v in pm.backbone.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("norm" in k for k in changed)
    assert res.history and (tmp_path / "o" / "backbone" / "config.json").is_file()
    again = PreferenceModel.from_heads(tmp_path / "o")  # the tuned backbone saved with the head
    q = ["Question 3: is the fox quick?"] * 2
    assert torch.allclose(again.score(q, ["yes", "no"]), pm.score(q, ["yes", "no"]), atol=1e-5)


# ----------------------------------------------------------------------------- a multi-layer pooler
class LayerMean(nn.Module):
    """The mean of several layers' states, fed to an inner pooler."""

    multi_layer = True

    def __init__(self, hidden_size: int, num_mixed: int = 1, inner: str = "identity", **inner_kwargs: object) -> None:
        super().__init__()
        self.inner = build_pooler(inner, hidden_size, **inner_kwargs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner(h.mean(-2))


def test_a_new_multi_layer_pooler_is_one_class_and_one_registration(tmp_path, request):
    POOLERS.register("layermean")(LayerMean)
    request.addfinalizer(lambda: POOLERS._items.pop("layermean"))  # for this test only
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    fit(FitConfig(data=str(_pairs_file(tmp_path / "pairs.jsonl", n=40)), out=str(tmp_path / "o"),
                  pooler="layermean", layers="0,2,-1", layermix_inner="swiglu", epochs=2, batch_size=8,
                  cache_dir=str(tmp_path / "c")), pm=pm, progress=False)
    head = pm.heads["default"]
    assert head.config.layers == [0, 2, -1] and head.config.pooler_kwargs["ffn_dim"] == 64  # the backbone's FFN
    other = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    other.load_heads(tmp_path / "o")
    assert torch.equal(other.score("q", ["a", "b"]), pm.score("q", ["a", "b"]))


# ----------------------------------------------------------------------------- plugins
PLUGIN = '''
import torch
from torch import nn


class PlugTanh(nn.Module):
    def __init__(self, hidden_size, **_):
        super().__init__()
        self.lin = nn.Linear(hidden_size, hidden_size)

    def forward(self, h):
        return torch.tanh(self.lin(h))


def plug_hinge(r_w, r_l, eps=0.1):
    margin = r_w - r_l
    loss = torch.relu(1 - margin).mean()
    return loss, {"loss": float(loss), "pair_accuracy": float((margin > 0).float().mean()),
                  "margin": float(margin.mean()), "reward_chosen": float(r_w.mean()),
                  "reward_rejected": float(r_l.mean())}
'''

MODE_MODULE = '''
from prefheads.training import MODES
from prefheads.training.strategies import FrozenTrainable


@MODES.register("plug_frozen")
class PlugFrozen(FrozenTrainable):
    """A frozen run by another name."""
'''


def _plugin_package(root: Path) -> Path:
    """A throwaway installed package: its code, and the dist-info an installer would write."""
    (root / "plug_pkg").mkdir(parents=True)
    (root / "plug_pkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "plug_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[prefheads.poolers]\nplug_tanh = plug_pkg:PlugTanh\n\n"
                                           "[prefheads.losses]\nplug_hinge = plug_pkg:plug_hinge\n")
    (root / "plug_modes.py").write_text(textwrap.dedent(MODE_MODULE))
    return root


def test_entry_points_register_on_the_first_lookup_that_misses(tmp_path, monkeypatch):
    from prefheads.registry import Registry

    monkeypatch.syspath_prepend(str(_plugin_package(tmp_path / "site")))
    poolers, losses = Registry("pooler", plugins="prefheads.poolers"), Registry("loss", plugins="prefheads.losses")
    assert poolers.get("plug_tanh").__name__ == "PlugTanh"  # what loading a saved head does
    assert "plug_hinge" in losses and losses.names() == ["plug_hinge"]
    head = poolers.get("plug_tanh")(8)
    assert head(torch.zeros(2, 8)).shape == (2, 8)


def test_plugins_reach_the_command_line(tmp_path):
    site = _plugin_package(tmp_path / "site")
    bb, tok = make_backbone("llama")
    bb.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               PREFHEADS_CACHE=str(tmp_path / "cache"))
    args = ["--plugin", "plug_modes", "fit", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "o"),
            "--data", str(_pairs_file(tmp_path / "pairs.jsonl", n=40)), "--pooler", "plug_tanh", "--objective",
            "plug_hinge", "--mode", "plug_frozen", "--epochs", "2", "--batch-size", "8"]
    r = subprocess.run([sys.executable, "-m", "prefheads.cli", *args], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((tmp_path / "o" / "heads.json").read_text())["heads"]["default"]["config"]
    assert (config["pooler"], config["meta"]["objective"], config["meta"]["mode"]) == (
        "plug_tanh", "plug_hinge", "plug_frozen")
