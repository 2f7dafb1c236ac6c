"""The ``run`` entry: a recipe YAML (+ ``key=value`` overrides) → validated config → the recipe.

Recipes register by name (the YAML's ``recipe:`` key) with their config dataclass and their one
entry function; configs are validated without importing any model code, so every shipped YAML
can be checked in CI without loading weights.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from prefheads.recipes.config import InHouseRecipe, RecipeBase
from prefheads.recipes.frozen_config import ProbesRecipe, TaskHeadsRecipe
from prefheads.recipes.schema import ConfigError, apply_overrides, build, dump_yaml
from prefheads.registry import Registry

# name -> (config dataclass, "module:function" of the entry, imported only to run)
RECIPES: Registry[tuple[type, str]] = Registry("recipe")
RECIPES.add("inhouse", (InHouseRecipe, "prefheads.recipes.inhouse:inhouse"))
RECIPES.add("probes", (ProbesRecipe, "prefheads.recipes.heads:probes"))
RECIPES.add("task_heads", (TaskHeadsRecipe, "prefheads.recipes.heads:task_heads"))

RESOLVED = "resolved_config.yaml"


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RecipeBase:
    """Read a recipe YAML, apply ``dotted.key=value`` overrides, and validate it.

    Raises:
        ConfigError: Naming the file and the dotted key at fault.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such recipe file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a recipe file is a mapping of keys, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides), source=str(p))


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> RecipeBase:
    """Validate a raw recipe mapping (its ``recipe:`` key picks the dataclass)."""
    name = raw.get("recipe")
    if name not in RECIPES:
        raise ConfigError(f"{source}: recipe: {name!r} is not a recipe; known: {RECIPES.names()}")
    return build(RECIPES.get(name)[0], raw, source)


def entry(name: str) -> Any:
    """The entry function of recipe ``name``."""
    module, fn = RECIPES.get(name)[1].split(":")
    return getattr(importlib.import_module(module), fn)


def run(config: str | os.PathLike[str] | RecipeBase, overrides: Sequence[str] = (), *, dry_run: bool = False,
        progress: bool = False) -> Any:
    """Run a recipe: validate, save ``<out>/resolved_config.yaml``, call its entry function.

    Args:
        config: A recipe YAML path or an already-built config.
        overrides: ``dotted.key=value`` strings (YAML values) applied over the file.
        dry_run: Validate and write nothing; return the resolved config.
        progress: Show progress bars inside training.

    Returns:
        The recipe's result (its summaries), or the config for ``dry_run``.
    """
    if isinstance(config, RecipeBase):
        cfg = config if not overrides else config_from_dict(apply_overrides(_plain(config), overrides))
    else:
        cfg = load_config(config, overrides)
    if dry_run:
        return cfg
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESOLVED).write_text(dump_yaml(cfg))
    import torch

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return entry(cfg.recipe)(cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)  # scoped to the run


def _plain(cfg: RecipeBase) -> dict[str, Any]:
    from prefheads.recipes.schema import to_plain

    return to_plain(cfg)
