"""Poolers: the map f from a backbone hidden state to the vector the reward is read from.

Every pooler is an ``nn.Module`` constructed as ``cls(hidden_size, **kwargs)`` that maps
``[..., d] -> [..., d]``. Register a new one with::

    from prefheads.poolers import POOLERS

    @POOLERS.register("my_pooler")
    class MyPooler(torch.nn.Module):
        def __init__(self, hidden_size: int, **kwargs): ...
        def forward(self, h: torch.Tensor) -> torch.Tensor: ...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prefheads.registry import Registry

POOLERS: Registry[type[nn.Module]] = Registry("pooler")


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


def build_pooler(name: str, hidden_size: int, **kwargs: object) -> nn.Module:
    """Instantiate the pooler registered as ``name``."""
    return POOLERS.get(name)(hidden_size, **kwargs)
