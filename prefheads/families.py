"""Model-family profiles: where to hook each architecture, as data (``zoo/families/*.yaml``).

A profile is keyed by ``config.model_type`` and names, relative to the causal-LM module, the
``ModuleList`` of decoder blocks (``layers``) and the final norm (``final_norm``), plus the
LoRA target modules and, optionally, the end-of-turn token and the config of a tiny random
model of the family (``tiny``: what the tests build each family from). Unknown families fall
back to a structural search with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from torch import nn

ZOO_DIR = Path(__file__).resolve().parent / "zoo" / "families"


@dataclass(frozen=True)
class FamilyProfile:
    """How prefheads attaches to one model family.

    Attributes:
        model_type: ``config.model_type`` this profile serves.
        layers: Dotted path of the decoder blocks' ``ModuleList``.
        final_norm: Dotted path of the norm applied after the last block.
        lora_targets: Module names peft LoRA should adapt.
        end_of_turn: End-of-turn token, when the family has a fixed one.
        description: One line for ``prefheads zoo``.
        generic: True for a profile found by the structural fallback.
        tiny: Config fields (besides ``vocab_size``) of a tiny random model of the family, for
            offline tests; empty if the profile gives none.
    """

    model_type: str
    layers: str
    final_norm: str
    lora_targets: tuple[str, ...] = field(default_factory=tuple)
    end_of_turn: str | None = None
    description: str = ""
    generic: bool = False
    tiny: dict[str, Any] = field(default_factory=dict, compare=False)


@lru_cache(maxsize=None)
def profiles() -> dict[str, FamilyProfile]:
    """All shipped profiles, by model_type."""
    out: dict[str, FamilyProfile] = {}
    for path in sorted(ZOO_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        try:
            prof = FamilyProfile(
                model_type=raw["model_type"],
                layers=raw["layers"],
                final_norm=raw["final_norm"],
                lora_targets=tuple(raw.get("lora_targets", ())),
                end_of_turn=raw.get("end_of_turn"),
                description=raw.get("description", ""),
                tiny=dict(raw.get("tiny") or {}),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: bad family profile, missing field {e}") from e
        out[prof.model_type] = prof
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """Return the transformers model inside peft / accelerate wrappers."""
    while not hasattr(model, "config") and hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted path, with an error naming the missing part."""
    mod = model
    for part in path.split("."):
        if not hasattr(mod, part):
            raise AttributeError(
                f"{type(model).__name__} has no module '{path}' (missing '{part}'); "
                "the family profile does not match this model"
            )
        mod = getattr(mod, part)
    return mod


def _generic_profile(model: nn.Module) -> FamilyProfile:
    n_layers = getattr(model.config, "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    lists = [x for x in lists if n_layers is None or len(x[1]) == n_layers] or lists
    if not lists:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}; add a zoo profile")
    layers_name = max(lists, key=lambda x: len(x[1]))[0]
    parent = layers_name.rsplit(".", 1)[0] if "." in layers_name else ""
    norms = [
        n for n, m in model.named_modules()
        if n.startswith(parent) and n.count(".") == layers_name.count(".")
        and ("norm" in type(m).__name__.lower() or "ln_f" in n or n.endswith("norm"))
    ]
    if not norms:
        raise ValueError(f"cannot find the final norm of {type(model).__name__}; add a zoo profile")
    mt = getattr(model.config, "model_type", "unknown")
    warnings.warn(
        f"no prefheads profile for model_type '{mt}': using blocks '{layers_name}' and final norm "
        f"'{norms[-1]}' found by structure; add zoo/families/{mt}.yaml to make this explicit",
        stacklevel=3,
    )
    return FamilyProfile(mt, layers_name, norms[-1], generic=True)


def profile_for(model: nn.Module) -> FamilyProfile:
    """The profile of ``model`` (unwrapping peft), falling back to a structural search."""
    inner = unwrap(model)
    mt = getattr(inner.config, "model_type", None)
    prof = profiles().get(mt)
    if prof is None:
        return _generic_profile(inner)
    get_module(inner, prof.layers)
    get_module(inner, prof.final_norm)
    return prof
