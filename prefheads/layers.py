"""Layer-aware probing: parse layer specs, read every layer from one pass, pick the best layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

FINAL = -1


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
        ValueError: for a malformed spec or an index out of range (names the bad part).
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
                raise ValueError(f"bad layer spec part {part!r} in {spec!r}: use all, 0,5,10 or 10:20") from None
    else:
        out = [int(x) for x in spec]
    for l in out:
        if l != FINAL and not 0 <= l < num_layers:
            raise ValueError(f"layer {l} out of range: the backbone has {num_layers} blocks (0..{num_layers - 1}, -1 = final norm)")
    return sorted(set(out), key=lambda l: num_layers if l == FINAL else l)


def layer_features(pm: Any, prompts: Sequence, completions: Sequence[str], layers: str | Sequence[int] | None = "all",
                   cache: Any = None) -> dict[int, torch.Tensor]:
    """Reward-token hidden states of every requested layer from ONE backbone pass.

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel`.
        prompts: One prompt per completion.
        completions: Assistant texts.
        layers: Layer spec (see :func:`parse_layers`).
        cache: A :class:`~prefheads.training.cache.FeatureCache` to read/write, or None.

    Returns:
        ``{layer: [N, d]}`` fp32.
    """
    from prefheads.training.cache import cached_features

    return cached_features(pm, prompts, completions, parse_layers(layers, pm.num_layers), cache)[0].states
