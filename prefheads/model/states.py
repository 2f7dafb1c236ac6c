"""The backbone states a :class:`~prefheads.model.PreferenceModel` holds: which peft adapters are
loaded into its backbone, and which state each head reads.

A head reads the base model (adapters off) or the base with one named adapter. Loading an adapter
wraps a plain backbone in a ``peft.PeftModel`` (once) and adds the adapter under a name of its
own; an adapter no head reads any more is dropped. Switching the backbone into one state for a
pass is :func:`prefheads.binding.reading`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from prefheads.binding import (active_adapter, adapter_digest, adapters_off, forget_layers, is_peft, reading,
                               rest_adapters_off, unique_name)
from prefheads.heads import RewardHead


class BackboneStates:
    """The adapter half of :class:`~prefheads.model.PreferenceModel` (a mixin over its attributes).

    Attributes:
        backbone: The causal LM (a ``peft.PeftModel`` once an adapter is loaded).
        heads: Attached heads by name.
        head_adapters: Head -> the adapter it reads (None: the base model).
        adapter_folders: Adapter -> the folder it was loaded from.
        adapter_digests: Adapter -> sha256 of its files.
    """

    backbone: nn.Module
    heads: nn.ModuleDict
    head_adapters: dict[str, str | None]
    adapter_folders: dict[str, str]
    adapter_digests: dict[str, str]

    _get: Callable[[str | None], RewardHead]

    def adapter_of(self, name: str) -> str | None:
        """The peft adapter head ``name`` reads (None: the base model, adapters off)."""
        self._get(name)
        if name in self.head_adapters:
            return self.head_adapters[name]
        return active_adapter(self.backbone)

    def head_groups(self, heads: Sequence[str] | None = None) -> list[tuple[str | None, list[str]]]:
        """Heads (default: all) grouped by the adapter they read, in order of first appearance:
        ``[(adapter, names)]``, one backbone pass per group."""
        groups: dict[str | None, list[str]] = {}
        for name in self.head_names if heads is None else heads:
            groups.setdefault(self.adapter_of(name), []).append(name)
        return list(groups.items())

    def reading(self, adapter: str | None) -> Any:
        """Context manager: the backbone runs with ``adapter`` active (None: the base model)."""
        return reading(self.backbone, adapter)

    def pin(self) -> None:
        """Bind every unbound head to the state it reads now (before the backbone's adapters change)."""
        now = active_adapter(self.backbone)
        for name in self.heads:
            self.head_adapters.setdefault(name, now)

    def load_adapter(self, path: Path, label: str, digest: str | None = None) -> str:
        """Load the peft adapter saved in ``path`` into the backbone; returns its name.

        An adapter whose files are identical to one loaded already is not loaded again: its name is
        returned. A plain backbone becomes a ``peft.PeftModel``: :meth:`pin` unbound heads first.
        peft injects the adapter's layers into the backbone's modules (the caller's model object
        too); they rest disabled, so that model's own logits and generations stay the base
        model's, and only a pass that reads the adapter (:meth:`reading`) turns it on. A backbone
        with an adapter in training (:meth:`new_adapter`) is left running it.
        """
        digest = digest or adapter_digest(path)
        for name, d in self.adapter_digests.items():
            if d == digest and is_peft(self.backbone) and name in self.backbone.peft_config:
                return name
        off = adapters_off(self.backbone)
        name = unique_name(self.backbone, label)
        if is_peft(self.backbone):
            self.backbone.load_adapter(str(path), adapter_name=name)
        else:
            from peft import PeftModel

            self.backbone = PeftModel.from_pretrained(self.backbone, str(path), adapter_name=name)
        self.backbone.eval()
        forget_layers(self.backbone)
        if off:
            rest_adapters_off(self.backbone)
        self.adapter_folders[name] = str(path.resolve())
        self.adapter_digests[name] = digest
        return name

    def new_adapter(self, name: str, config: Any, heads: Sequence[str]) -> nn.Module:
        """Add a fresh trainable peft adapter (``config``, e.g. ``peft.LoraConfig``) read by ``heads``.

        The adapter becomes the active and only trainable one; adapters already loaded, and the
        heads reading them, are left as they are. Returns the ``peft.PeftModel`` backbone.
        """
        for h in heads:
            self._get(h)
        self.pin()
        adapter = unique_name(self.backbone, name)
        if is_peft(self.backbone):
            self.backbone.add_adapter(adapter, config)
        else:
            from peft import get_peft_model

            self.backbone = get_peft_model(self.backbone, config, adapter_name=adapter)
        forget_layers(self.backbone)
        self.backbone.set_adapter(adapter)  # active, and trainable; every other adapter frozen
        if adapters_off(self.backbone):  # loaded adapters rest disabled; a trained one runs
            self.backbone.base_model.enable_adapter_layers()
        for h in heads:
            self.head_adapters[h] = adapter
        return self.backbone

    def prune_adapters(self) -> None:
        """Drop adapters loaded from folders that no attached head reads any more (frees their weights)."""
        if not is_peft(self.backbone):
            return
        used = {self.adapter_of(h) for h in self.heads}
        unused = [a for a in self.adapter_folders if a not in used]
        if not unused:
            return
        if not used - {None} and set(self.backbone.peft_config) <= set(unused):
            self.backbone = self.backbone.unload()  # no adapter left to read: back to the plain model
        else:
            for a in unused:
                self.backbone.delete_adapter(a)
            forget_layers(self.backbone)
        for a in unused:
            self.adapter_folders.pop(a, None)
            self.adapter_digests.pop(a, None)
