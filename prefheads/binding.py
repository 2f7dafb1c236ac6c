"""Backbone states: the base model, or the base with one named peft adapter; switched per pass.

A head trained on the frozen backbone reads the base model; a head trained with LoRA reads the
base plus the adapter trained with it. One :class:`~prefheads.model.PreferenceModel` holds heads
of both kinds at once: every adapter is loaded once into one ``peft.PeftModel``, under its own
name, and each backbone pass runs in exactly one state, switched for that pass only
(:func:`reading`): what ``set_adapter(name)`` gives for the heads of an adapter, what
``disable_adapter()`` gives for the heads of the base. The model keeps which head reads which
state and groups heads by state for scoring (``PreferenceModel.head_groups``): one pass per
group, never a head fed by another head's adapter.

This module works on the backbone alone: whether it carries adapters, which one is active,
switching for a pass, an adapter folder's digest, a free adapter name, saving one adapter.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from prefheads.headio import atomic_write


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (adapters can be loaded, switched, disabled)."""
    return all(hasattr(model, a) for a in ("peft_config", "set_adapter", "disable_adapter", "load_adapter"))


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def adapters_off(model: nn.Module) -> bool:
    """Whether ``model`` computes the base model outside a pass: a plain model, or a
    ``peft.PeftModel`` whose adapter layers are all disabled."""
    return not is_peft(model) or all(getattr(m, "_disable_adapters", False) for m in _tuner_layers(model))


def forget_layers(model: nn.Module) -> None:
    """Drop the cached LoRA layer list of ``model`` (after its adapters changed)."""
    _LAYERS.pop(model, None)


def rest_adapters_off(model: nn.Module) -> None:
    """Disable every adapter layer of a ``peft.PeftModel`` outside a pass (what ``model(...)`` and
    ``generate`` then compute is the base model's); :func:`reading` turns one on for its pass only."""
    if is_peft(model):
        for m in _tuner_layers(model):
            m.enable_adapters(False)


def active_adapter(model: nn.Module) -> str | None:
    """The adapter ``model`` runs with now (None for a plain model)."""
    if not is_peft(model):
        return None
    name = model.active_adapter
    if isinstance(name, (list, tuple)):
        return name[0] if name else None
    return name


# peft's own switches (``set_adapter``, ``disable_adapter()``) also set requires_grad on every
# adapter weight and walk every module: measured on SmolLM2-135M with two LoRA adapters on CPU,
# 48 ms to set an adapter and back, 91 ms to disable and re-enable — a fifth of a short scoring
# pass, and far more than a GPU pass. A pass only needs each LoRA layer's two switches
# (``_disable_adapters``, ``_active_adapter``, what its forward reads): flipping those on the
# cached layers takes well under a millisecond. peft's API remains the path wherever that is not
# exactly equivalent (merged adapters, auxiliary trainable modules), and tests hold the two equal.
_LAYERS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[str, ...], list[nn.Module] | None]]" = \
    weakref.WeakKeyDictionary()


def _switchable(model: nn.Module) -> list[nn.Module] | None:
    """The LoRA layers of ``model`` whose switches a pass may flip, or None: use peft's API."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    # keyed by each adapter's config object, not only its name: an adapter dropped and another
    # loaded under the same name (on other modules) must not reuse the old layer list
    key = tuple((name, id(cfg)) for name, cfg in model.peft_config.items())
    hit = _LAYERS.get(model)
    if hit is None or hit[0] != key:
        layers: list[nn.Module] | None = []
        for m in model.modules():
            if isinstance(m, AuxiliaryTrainingWrapper):
                layers = None
                break
            if isinstance(m, BaseTunerLayer):
                layers.append(m)
        if layers is not None and not all(hasattr(m, "_disable_adapters") and hasattr(m, "_active_adapter")
                                          for m in layers):
            layers = None
        hit = _LAYERS[model] = (key, layers)
    layers = hit[1]
    if layers is None or any(m.merged for m in layers):
        return None
    return layers


@contextmanager
def _peft_switch(model: nn.Module, adapter: str | None) -> Iterator[None]:
    """:func:`reading` through peft's API, restoring which parameters require grad and whether
    the adapter layers rest disabled (peft's switches leave them enabled)."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    current = active_adapter(model)
    off = adapters_off(model)
    try:
        if adapter is None:
            with model.disable_adapter():
                yield
        else:
            if off:
                model.base_model.enable_adapter_layers()
            if adapter != current:
                model.set_adapter(adapter)
            try:
                yield
            finally:
                if adapter != current:
                    model.set_adapter(current)
    finally:
        if off:
            rest_adapters_off(model)
        for p, g in grads:
            p.requires_grad_(g)


@contextmanager
def reading(model: nn.Module, adapter: str | None, *, use_peft_api: bool = False) -> Iterator[None]:
    """Run the block with ``model`` in one state: ``adapter`` active, or (None) the base model.

    Everything is restored on exit, on error too: the active adapter, whether adapters are
    enabled, and which parameters require grad.

    Args:
        model: The backbone (a plain model reads the base model only).
        adapter: The adapter to read through, or None for the base model (adapters off).
        use_peft_api: Switch with ``set_adapter`` / ``disable_adapter()`` even where flipping the
            LoRA layers' switches is equivalent (and much faster).
    """
    if not is_peft(model):
        if adapter is not None:
            raise KeyError(f"adapter {adapter!r} is not loaded: the backbone carries no adapters")
        yield
        return
    if adapter is not None and adapter not in model.peft_config:
        raise KeyError(f"adapter {adapter!r} is not loaded; adapters: {list(model.peft_config)}")
    layers = None if use_peft_api else _switchable(model)
    if layers is None:
        with _peft_switch(model, adapter):
            yield
        return
    saved = [(m._disable_adapters, m._active_adapter) for m in layers]
    # plain attributes, set in the instance dict: nn.Module.__setattr__ costs 3 µs a call
    for m in layers:
        m.__dict__["_disable_adapters"] = adapter is None
        if adapter is not None:
            m.__dict__["_active_adapter"] = [adapter]
    try:
        yield
    finally:
        for m, (off, active) in zip(layers, saved):
            m.__dict__["_disable_adapters"], m.__dict__["_active_adapter"] = off, active


def _label(text: str) -> str:
    # peft names adapters by module-dict keys: no dots; and a name inside the "lora_" prefix
    # would be mistaken for it when weights are loaded
    name = re.sub(r"[^A-Za-z0-9_-]", "_", text) or "adapter"
    return f"{name}_adapter" if name in "lora_" else name


def unique_name(backbone: nn.Module, text: str) -> str:
    """An adapter name from ``text`` (a folder or head name) not yet used on ``backbone``."""
    base = _label(text)
    taken = set(backbone.peft_config) if is_peft(backbone) else set()
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


# adapter_config.json keys that say where or how an adapter was saved, not what it computes
_CONFIG_RECORD_ONLY = ("base_model_name_or_path", "revision", "inference_mode")


def adapter_digest(path: Path) -> str:
    """sha256 of what an adapter folder computes: its config (record-only keys left out) and weights."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if not (f.is_file() and f.name.startswith("adapter_")):
            continue
        data = f.read_bytes()
        if f.name == "adapter_config.json":
            config = {k: v for k, v in json.loads(data).items() if k not in _CONFIG_RECORD_ONLY}
            if isinstance(config.get("target_modules"), list):  # a set, saved in no fixed order
                config["target_modules"] = sorted(config["target_modules"])
            data = json.dumps(config, sort_keys=True).encode()
        h.update(f.name.encode())
        h.update(data)
    return h.hexdigest()


def save_adapter(backbone: nn.Module, adapter: str, dest: Path) -> None:
    """Write adapter ``adapter`` of ``backbone`` as a peft adapter folder at ``dest``
    (``adapter_config.json`` + ``adapter_model.safetensors``), replacing each file in one ``os.replace``."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{secrets.token_hex(6)}.tmp"
    try:
        backbone.save_pretrained(str(tmp), selected_adapters=[adapter])
        # peft writes an adapter not named "default" into a sub-folder of that name
        src = tmp if adapter == "default" else tmp / adapter
        for f in src.iterdir():
            if f.is_file():  # rewritten rather than moved: head folder files take the umask's mode
                atomic_write(dest / f.name, f.read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
