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
