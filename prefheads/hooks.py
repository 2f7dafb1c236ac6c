"""Forward hooks that read hidden states out of a backbone, as a scoped resource.

``Capture`` registers one hook per requested layer on enter, checks every hook point resolves,
and removes all handles on exit, including when the forward raises. A hook gathers only the
positions it is asked for, so no ``[batch, seq, d]`` tensor of other layers is kept. When the
deepest requested layer is a decoder block, its hook stops the forward right there (early
exit): later blocks, the final norm and the vocab projection are never computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prefheads.families import FamilyProfile, get_module, unwrap

FINAL = -1
"""The hidden state after the final norm; ``i >= 0`` is the output of decoder block ``i``."""


class LayerError(ValueError, IndexError):
    """A layer the backbone does not have, or a malformed layer spec (a ValueError and an IndexError)."""


def check_layer(layer: int, num_layers: int) -> int:
    """Return ``layer`` if a backbone of ``num_layers`` blocks has it (-1: final norm, i: block i).

    Raises:
        LayerError: Naming the layer and the range.
    """
    if layer != FINAL and not 0 <= layer < num_layers:
        raise LayerError(f"layer {layer} out of range: the backbone has {num_layers} blocks "
                         f"(0..{num_layers - 1}, -1 = final norm)")
    return layer


AUTO_DEPTHS = (5 / 15, 7 / 15, 9 / 15, 10 / 15, 11 / 15, 12 / 15, 13 / 15)
"""Relative depths ``--layer auto`` searches by default: from a third of the way up, denser in the
upper-middle blocks, where frozen probes of small chat models score best (docs/benchmarks.md)."""


def auto_layers(num_layers: int) -> list[int]:
    """The candidate layers ``--layer auto`` searches by default: the blocks at :data:`AUTO_DEPTHS`
    and the final norm (``[10, 14, 18, 20, 22, 24, 26, -1]`` for 30 blocks)."""
    blocks = sorted({min(num_layers - 1, round(num_layers * f)) for f in AUTO_DEPTHS})
    return blocks + [FINAL]


def parse_layers(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """Expand a layer spec into a sorted list of hidden-state indices.

    Args:
        spec: ``"all"`` (every block and the final norm), ``"0,5,10"``, a slice ``"10:20"``
            (``"10:"`` to the last block), a list of ints, or None (= ``"all"``). ``-1`` is the
            final norm.
        num_layers: Block count of the backbone.

    Raises:
        LayerError: for a malformed spec or an index out of range (names the bad part).
    """
    if spec is None or spec == "all":
        return list(range(num_layers)) + [FINAL]
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if ":" in part:
                    a, _, b = part.partition(":")
                    out += list(range(int(a or 0), int(b) if b else num_layers))
                else:
                    out.append(int(part))
            except ValueError:
                raise LayerError(f"bad layer spec part {part!r} in {spec!r}: use all, 0,5,10 or 10:20") from None
    else:
        out = [int(x) for x in spec]
    for l in out:
        check_layer(l, num_layers)
    return sorted(set(out), key=lambda l: num_layers if l == FINAL else l)


class _StopForward(Exception):
    """Raised inside a hook to end the forward early; caught by :class:`Capture`."""


def hook_module(model: nn.Module, profile: FamilyProfile, layer: int) -> nn.Module:
    """The module whose output is hidden state ``layer`` (-1: final norm, i: block i).

    A model built without its final norm where the profile allows it (``final_norm_optional``:
    OPT with ``do_layer_norm_before=False``) gives its last block for -1: its output is the
    state the vocab projection reads.
    """
    inner = unwrap(model)
    if layer == FINAL:
        norm = get_module(inner, profile.final_norm, optional=profile.final_norm_optional)
        if norm is not None:
            return norm
        return get_module(inner, profile.layers)[-1]
    blocks = get_module(inner, profile.layers)
    return blocks[check_layer(layer, len(blocks))]


def num_layers(model: nn.Module, profile: FamilyProfile) -> int:
    """Number of decoder blocks."""
    return len(get_module(unwrap(model), profile.layers))


class Capture:
    """Context manager capturing hidden states at given positions from one forward.

    Args:
        model: The causal LM (possibly peft-wrapped).
        profile: Its family profile.
        layers: Layers to read (-1 = after the final norm, i = output of block i).
        positions: ``[B]`` long tensor: the sequence index to read per row, or ``None``.
        full_final: Also keep the full ``[B, T, d]`` final-norm output (for log-probs).
        early_exit: Stop the forward after the deepest requested block when the final norm
            is not needed.

    After the ``with`` block, ``states[layer]`` is ``[B, d]`` and ``final_full`` is
    ``[B, T, d]`` or ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        profile: FamilyProfile,
        layers: list[int],
        positions: torch.Tensor | None,
        *,
        full_final: bool = False,
        early_exit: bool = True,
    ) -> None:
        self.model, self.profile = model, profile
        self.layers = sorted(set(layers))
        self.positions = positions
        self.full_final = full_final
        need_final = full_final or FINAL in self.layers
        deepest = max((l for l in self.layers if l != FINAL), default=None)
        self.stop_at = deepest if (early_exit and not need_final and deepest is not None) else None
        self.states: dict[int, torch.Tensor] = {}
        self.final_full: torch.Tensor | None = None
        self._handles: list[Any] = []

    def _make_hook(self, layer: int):
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            h = out[0] if isinstance(out, (tuple, list)) else out
            if self.positions is not None:
                rows = torch.arange(h.shape[0], device=h.device)
                self.states[layer] = h[rows, self.positions.to(h.device)]
            if layer == FINAL and self.full_final:
                self.final_full = h
            if layer == self.stop_at:
                raise _StopForward

        return hook

    def __enter__(self) -> "Capture":
        points = set(self.layers) | ({FINAL} if self.full_final else set())
        try:
            for layer in points:
                mod = hook_module(self.model, self.profile, layer)
                self._handles.append(mod.register_forward_hook(self._make_hook(layer)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook handle (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.remove()
        return exc_type is _StopForward
