"""Poolers: the map f from a backbone hidden state to the vector the reward is read from.

Every pooler is an ``nn.Module`` constructed as ``cls(hidden_size, **kwargs)`` that maps
``[..., d] -> [..., d]``. Register a new one with::

    from prefheads.poolers import POOLERS

    @POOLERS.register("my_pooler")
    class MyPooler(torch.nn.Module):
        def __init__(self, hidden_size: int, **kwargs): ...
        def forward(self, h: torch.Tensor) -> torch.Tensor: ...

Two optional class attributes widen what a pooler may be, with no change elsewhere:

* ``multi_layer = True``: it mixes several hidden states. Its head reads the layers of
  ``HeadConfig.layers`` (``--layers`` on the command line), the input is ``[..., L, d]``, and it
  is built with ``num_mixed=L`` and ``inner`` (the pooler applied after mixing, ``--layermix-inner``,
  whose backbone defaults it receives).
* ``defaults(hidden_size, backbone_config, **kwargs) -> dict``: keyword arguments taken from the
  backbone where the head's ``pooler_kwargs`` leave them out (``swiglu``: the backbone's FFN width).

Poolers of installed packages register through the ``prefheads.poolers`` entry-point group
(see ``docs/extending.md``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prefheads.registry import Registry

POOLERS: Registry[type[nn.Module]] = Registry("pooler", plugins="prefheads.poolers")


def ffn_width(config: Any, hidden_size: int) -> int:
    """The feed-forward width of a backbone config (4·d when it names none)."""
    return int(getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
               or getattr(config, "n_inner", None) or 4 * hidden_size)


@POOLERS.register("identity")
class IdentityPooler(nn.Module):
    """f(h) = h: the GPT-style sequence-classification head (a linear probe)."""

    def __init__(self, hidden_size: int, **_: object) -> None:
        super().__init__()
        self.hidden_size = hidden_size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., d]``."""
        return h


@POOLERS.register("bert")
class BertPooler(nn.Module):
    """BERT-style pooler: ``tanh(Linear(d, d)(h))``."""

    def __init__(self, hidden_size: int, **_: object) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., d]``."""
        return torch.tanh(self.dense(h))


@POOLERS.register("swiglu")
class SwiGLUPooler(nn.Module):
    """SwiGLU FFN pooler: ``tanh(W2 · (x · silu(g)))`` with ``[x, g] = W1 h``.

    Args:
        hidden_size: d.
        ffn_dim: Inner width d_ffn (``W1: d -> 2·d_ffn``, ``W2: d_ffn -> d``).
    """

    @classmethod
    def defaults(cls, hidden_size: int, backbone_config: Any, **_: object) -> dict[str, Any]:
        """``ffn_dim``: the backbone's own feed-forward width."""
        return {"ffn_dim": ffn_width(backbone_config, hidden_size)}

    def __init__(self, hidden_size: int, ffn_dim: int | None = None, **_: object) -> None:
        super().__init__()
        ffn_dim = int(ffn_dim or 4 * hidden_size)
        self.ffn_dim = ffn_dim
        self.up = nn.Linear(hidden_size, 2 * ffn_dim)
        self.down = nn.Linear(ffn_dim, hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., d]``."""
        x, g = self.up(h).chunk(2, dim=-1)
        return torch.tanh(self.down(x * F.silu(g)))


@POOLERS.register("layermix")
class LayerMixPooler(nn.Module):
    """Learned softmax-weighted sum of several layers' states, scaled, fed to an inner pooler.

    ``f(h) = inner(γ · Σ_l softmax(a)_l · h_l)`` with ``h: [..., L, d]``; ``a`` starts uniform
    and ``γ`` at 1.

    Args:
        hidden_size: d.
        num_mixed: L, the number of layers mixed.
        inner: Registered pooler applied to the mix (``identity``, ``bert``, ``swiglu``...).
        **inner_kwargs: Passed to the inner pooler (``ffn_dim``...).
    """

    multi_layer = True

    def __init__(self, hidden_size: int, num_mixed: int = 1, inner: str = "identity", **inner_kwargs: object) -> None:
        super().__init__()
        if inner == "layermix":
            raise ValueError("layermix cannot nest itself")
        self.num_mixed = int(num_mixed)
        self.logits = nn.Parameter(torch.zeros(self.num_mixed))
        self.scale = nn.Parameter(torch.ones(()))
        self.inner = build_pooler(inner, hidden_size, **inner_kwargs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., L, d] -> [..., d]``."""
        if h.shape[-2] != self.num_mixed:
            raise ValueError(f"layermix expects {self.num_mixed} layers, got {h.shape[-2]}")
        w = torch.softmax(self.logits, dim=0)
        return self.inner(self.scale * torch.einsum("l,...ld->...d", w, h))


def build_pooler(name: str, hidden_size: int, **kwargs: object) -> nn.Module:
    """Instantiate the pooler registered as ``name``."""
    return POOLERS.get(name)(hidden_size, **kwargs)


def is_multi_layer(name: str) -> bool:
    """Whether the pooler registered as ``name`` mixes several hidden states (``multi_layer``)."""
    return bool(getattr(POOLERS.get(name), "multi_layer", False))


def pooler_defaults(name: str, hidden_size: int, backbone_config: Any, **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments pooler ``name`` takes from the backbone: its ``defaults``, or for a
    multi-layer pooler without them its ``inner`` pooler's; none otherwise."""
    cls = POOLERS.get(name)
    fn = getattr(cls, "defaults", None)
    if fn is not None:
        return dict(fn(hidden_size, backbone_config, **kwargs))
    if getattr(cls, "multi_layer", False) and "inner" in kwargs:
        return pooler_defaults(str(kwargs["inner"]), hidden_size, backbone_config)
    return {}
