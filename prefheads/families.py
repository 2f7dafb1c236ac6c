"""Model-family profiles: where to hook each architecture, as data (``zoo/families/*.yaml``).

A profile is keyed by ``config.model_type`` and names, relative to the causal-LM module, the
``ModuleList`` of decoder blocks (``layers``) and the final norm (``final_norm``), plus the
LoRA target modules and, optionally, the end-of-turn token, the projection between the final
state and the vocab projection (``output_proj``), whether the final norm may be absent
(``final_norm_optional``) and the config of a tiny random model of the family (``tiny``: what
the tests build each family from). Unknown families fall back to a structural search with a
warning.

Multimodal wrappers (Gemma-3 4B and up load as ``Gemma3ForConditionalGeneration``) keep the
language model's width, depth and context in a nested text config: :func:`text_config` reads it.
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
        final_norm_optional: The final norm may be None in a model of the family (OPT built with
            ``do_layer_norm_before=False``, as opt-350m: each block ends with its own norm); the
            final state (-1) is then the last block's output.
        output_proj: Dotted path of a projection the final state passes through before the
            vocab projection, where the model has one (OPT's ``project_out`` when
            ``word_embed_proj_dim`` differs from ``hidden_size``); heads read the state before it.
    """

    model_type: str
    layers: str
    final_norm: str
    lora_targets: tuple[str, ...] = field(default_factory=tuple)
    end_of_turn: str | None = None
    description: str = ""
    generic: bool = False
    tiny: dict[str, Any] = field(default_factory=dict, compare=False)
    final_norm_optional: bool = False
    output_proj: str | None = None


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
                final_norm_optional=bool(raw.get("final_norm_optional", False)),
                output_proj=raw.get("output_proj"),
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


def text_config(model: nn.Module) -> Any:
    """The config of ``model``'s language model: the nested text config of a multimodal wrapper
    (``Gemma3ForConditionalGeneration``), else the model's own config."""
    cfg = unwrap(model).config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def hidden_width(config: Any) -> int:
    """Width of the hidden states of a (text) config: ``hidden_size``, or GPT-2's ``n_embd``."""
    for attr in ("hidden_size", "n_embd"):
        if isinstance(getattr(config, attr, None), int):
            return int(getattr(config, attr))
    raise ValueError(f"{type(config).__name__} names no hidden width (hidden_size or n_embd)")


def get_module(model: nn.Module, path: str, *, optional: bool = False) -> nn.Module | None:
    """Resolve a dotted path, with an error naming the missing part.

    Args:
        model: The module to resolve ``path`` in.
        path: Dotted attribute path.
        optional: Return None where the last part is None (a module the model was built
            without, e.g. OPT's ``project_out``) instead of raising.

    Raises:
        AttributeError: Naming the model and the part that is missing, or None.
    """
    mod = model
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not hasattr(mod, part):
            raise AttributeError(
                f"{type(model).__name__} has no module '{path}' (missing '{part}'); "
                "the family profile does not match this model"
            )
        mod = getattr(mod, part)
        if mod is None:
            if optional and i == len(parts) - 1:
                return None
            raise AttributeError(
                f"{type(model).__name__} has no module '{path}' ('{part}' is None in this model); "
                "the family profile does not match this model"
            )
    return mod


def _generic_profile(model: nn.Module) -> FamilyProfile:
    n_layers = getattr(text_config(model), "num_hidden_layers", None)
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
    get_module(inner, prof.final_norm, optional=prof.final_norm_optional)
    if prof.output_proj:
        get_module(inner, prof.output_proj, optional=True)
    return prof
