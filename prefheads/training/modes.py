"""The training modes by name: ``MODES`` maps ``--mode`` to its :class:`~prefheads.training.strategies.Trainable`.

The registry sits below the config that names a mode and the strategies that register one, so
:class:`~prefheads.training.config.FitConfig` validates ``mode`` (and what the mode allows)
through it without importing the strategies. A mode class says what it allows:

* ``trains_backbone``: the backbone trains (no feature cache; ``--layer auto`` and ``--lm-score``
  need a frozen backbone's cached features);
* ``quantized``: it can train on a 4/8-bit backbone.
"""

from __future__ import annotations

from torch import nn

from prefheads.registry import Registry

MODES: Registry[type[nn.Module]] = Registry("training mode")


def mode_names() -> list[str]:
    """Every mode, in the order registered (frozen, lora, full, then any added)."""
    return MODES.names(sort=False)


def frozen_modes() -> list[str]:
    """Modes whose backbone does not train (cached features)."""
    return [m for m in mode_names() if not MODES.get(m).trains_backbone]


def trained_modes() -> list[str]:
    """Modes whose backbone trains."""
    return [m for m in mode_names() if MODES.get(m).trains_backbone]


def quantized_modes() -> list[str]:
    """Modes that can train on a 4/8-bit backbone."""
    return [m for m in mode_names() if MODES.get(m).quantized]


def choices(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]
