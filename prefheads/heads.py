"""A reward head: pooler → dropout → reward vector, with an optional fixed input standardiser.

``r = w · dropout(f((h - μ) / σ)) (+ b)``. μ and σ are buffers (identity by default) that frozen
probes fit once on their training features: last-layer states carry a large constant offset
that otherwise saturates ``tanh`` poolers and collapses every answer onto one.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prefheads.poolers import POOLERS, build_pooler, is_multi_layer


@dataclass
class HeadConfig:
    """Configuration of one reward head; round-trips through JSON.

    Attributes:
        pooler: Registered pooler name (``identity``, ``bert``, ``swiglu``, ...).
        hidden_size: Width d of the hidden state read from the backbone.
        layer: Which hidden state the head reads (-1: last layer after the final norm;
            i >= 0: output of decoder block i).
        layers: For multi-layer poolers (``layermix``, any with ``multi_layer``): the hidden
            states read, in order; ``layer`` is then ignored.
        num_base_layers: Block count of the backbone the head was built for (multi-layer heads
            refuse any other).
        dropout: Dropout on the pooler output (paper: 0.1; 0 for frozen backbones).
        bias: Whether the reward vector has a bias.
        pooler_kwargs: Extra pooler arguments (``ffn_dim`` for ``swiglu``).
        init_std: Std of the normal init of every weight (biases start at 0).
        score_input: The LM's own score the reward adds (``logprob_mean``, ``logprob_sum``,
            ``logprob_char``, or their ``raw:`` versions: see :mod:`prefheads.lmscores`), a
            list of such names (a weighted sum of several), or None for the paper's pure DPH.
            Such a head needs log-probs from the backbone pass that scores it (and the raw
            view's pass for ``raw:`` names).
        meta: Free-form record (task, training summary...) saved with the head.
    """

    pooler: str = "swiglu"
    hidden_size: int = 0
    layer: int = -1
    layers: list[int] | None = None
    num_base_layers: int | None = None
    dropout: float = 0.1
    bias: bool = False
    pooler_kwargs: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02
    score_input: str | list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # configs are read back from hand-editable JSON: every field is checked by name here, so a
        # bad value is an error naming it rather than a failure deep inside torch
        if not isinstance(self.pooler, str):
            raise TypeError(f"pooler must be a pooler name, got {self.pooler!r}")
        POOLERS.get(self.pooler)  # unknown pooler -> clear error listing known names
        self.hidden_size = _integer("hidden_size", self.hidden_size)
        self.layer = _integer("layer", self.layer)
        if self.num_base_layers is not None:
            self.num_base_layers = _integer("num_base_layers", self.num_base_layers)
        self.dropout = _real("dropout", self.dropout)
        self.init_std = _real("init_std", self.init_std)
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be true or false, got {self.bias!r}")
        for name in ("pooler_kwargs", "meta"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be an object (dict), got {getattr(self, name)!r}")
        if self.hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {self.hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)):
                raise TypeError(f"layers must be a list of layer indices, got {self.layers!r}")
            self.layers = [_integer("layers", l) for l in self.layers]
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be distinct and non-empty, got {self.layers}")
        if is_multi_layer(self.pooler) and not self.layers:
            raise ValueError(f"the {self.pooler} pooler needs layers=[...]")
        if self.score_input is not None:
            from prefheads.lmscores import check_score

            if isinstance(self.score_input, (list, tuple)):
                self.score_input = [check_score(n) for n in self.score_input]
                if not self.score_input:
                    raise ValueError("score_input is an empty list: name at least one score, or use None")
                if len(set(self.score_input)) != len(self.score_input):
                    raise ValueError(f"score_input must list distinct scores, got {self.score_input}")
            else:
                check_score(self.score_input)  # unknown score -> clear error listing known names

    @property
    def score_names(self) -> list[str]:
        """The scores the reward adds, as a list (empty for a pure DPH)."""
        s = self.score_input
        return [] if s is None else [s] if isinstance(s, str) else list(s)

    @property
    def reads(self) -> list[int]:
        """The hidden states this head reads."""
        return list(self.layers) if self.layers else [self.layer]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeadConfig":
        """Build from a dict, ignoring keys written by newer versions."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_head_name(name: Any) -> str:
    """Return ``name`` if a head may be called so: a non-empty string without ``.`` (heads are
    modules of a ``ModuleDict``, whose keys are attribute names) that is no attribute of one.

    Raises:
        ValueError: Naming the head and what is wrong with the name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a head name must be a non-empty string, got {name!r}")
    if "." in name:
        raise ValueError(f"head name {name!r} contains '.', which a head name may not "
                         f"(e.g. {name.replace('.', '_')!r})")
    if hasattr(_MODULE_DICT, name):
        raise ValueError(f"head name {name!r} is taken by an attribute of torch's ModuleDict; pick another")
    return name


_MODULE_DICT = nn.ModuleDict()  # what a head name must not shadow


SCORE_SCALE_INIT = 0.5413  # softplus(0.5413) = 1: the standardised score enters at unit scale


class RewardHead(nn.Module):
    """Pooler + dropout + reward vector. Maps hidden states ``[N, d]`` to rewards ``[N]``.

    A head computes in fp32 whatever the backbone's dtype: a cast of a module holding it
    (``pm.to(torch.bfloat16)``, ``pm.half()``) moves it to the new device but keeps its
    parameters and buffers fp32.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        shape = (len(config.layers), d) if config.layers else (d,)
        self.register_buffer("input_mean", torch.zeros(shape))
        self.register_buffer("input_std", torch.ones(shape))
        kw = dict(config.pooler_kwargs)
        if is_multi_layer(config.pooler):
            kw["num_mixed"] = len(config.layers)
        self.pooler = build_pooler(config.pooler, d, **kw)
        self.dropout = nn.Dropout(config.dropout)
        self.reward = nn.Linear(d, 1, bias=config.bias)
        if isinstance(config.score_input, str):
            # r += softplus(a) · (s - μ) / σ: a positive scale, so the score's ranking is kept
            self.register_buffer("score_mean", torch.zeros(()))
            self.register_buffer("score_std", torch.ones(()))
            self.score_scale = nn.Parameter(torch.zeros(()))
        elif config.score_input is not None:
            # several scores: r += Σ_k w_k · (s_k - μ_k) / σ_k, free weights (a fitted combination)
            k = len(config.score_input)
            self.register_buffer("score_mean", torch.zeros(k))
            self.register_buffer("score_std", torch.ones(k))
            self.score_weight = nn.Parameter(torch.zeros(k))
        self.reset_parameters()

    def _apply(self, fn: Any, recurse: bool = True) -> "RewardHead":
        # every tensor a head holds is fp32: a floating-point cast keeps the original values
        # (not rounded through the new dtype), a device move still moves them
        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if out.is_floating_point() and out.dtype != torch.float32:
                return t.to(device=out.device, dtype=torch.float32)
            return out

        return super()._apply(keep_fp32, recurse)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases (as the reference code)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=self.config.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.config.score_input, str):
            nn.init.constant_(self.score_scale, SCORE_SCALE_INIT)
        elif self.config.score_input is not None:
            nn.init.constant_(self.score_weight, 1.0 / len(self.config.score_input))

    @torch.no_grad()
    def fit_standardizer(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the input standardiser from training features ``[N, d]`` (``[N, L, d]`` multi-layer)."""
        f = features.float()
        self.input_mean.copy_(f.mean(0))
        self.input_std.copy_(f.std(0).clamp_min(eps) if f.shape[0] > 1 else torch.ones_like(f[0]))

    def select(self, states: dict[int, torch.Tensor]) -> torch.Tensor:
        """This head's input from ``{layer: [N, d]}``: ``[N, d]``, or ``[N, L, d]`` multi-layer."""
        if self.config.layers:
            return torch.stack([states[l] for l in self.config.layers], dim=-2)
        return states[self.config.layer]

    @property
    def uses_scores(self) -> bool:
        """Whether the reward adds the LM's own score (``config.score_input``)."""
        return self.config.score_input is not None

    @property
    def uses_raw_view(self) -> bool:
        """Whether a score comes from the raw view (:mod:`prefheads.rawtext`: a second pass)."""
        from prefheads.lmscores import is_raw

        return any(is_raw(n) for n in self.config.score_names)

    @torch.no_grad()
    def fit_score_standardizer(self, scores: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the score standardiser from training scores ``[N]`` (``[N, S]`` for several)."""
        s = scores.double()
        self.score_mean.copy_(s.mean(0))
        self.score_std.copy_(s.std(0).clamp_min(eps) if s.shape[0] > 1 else torch.ones_like(s[0]))

    def score_term(self, scores: torch.Tensor) -> torch.Tensor:
        """The reward's LM-score part: ``softplus(a) · (s - μ) / σ`` for one score (``[...] ->
        [...]``), ``Σ_k w_k (s_k - μ_k) / σ_k`` for several (``[..., S] -> [...]``); fp32."""
        z = (scores.double() - self.score_mean.double()) / self.score_std.double()
        if isinstance(self.config.score_input, str):
            return nn.functional.softplus(self.score_scale) * z.float()
        return (z * self.score_weight.double()).sum(-1).float()

    def forward(self, h: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., d]`` (or ``[..., L, d]`` multi-layer) ``-> [...]`` rewards, computed in fp32.

        Args:
            h: Hidden states.
            scores: ``[...]`` the LM's score of each candidate (``config.score_input``), or
                ``[..., S]`` for a head of several scores; required by a log-prob-aware head,
                ignored otherwise.
        """
        h = (h.float() - self.input_mean) / self.input_std
        r = self.reward(self.dropout(self.pooler(h))).squeeze(-1)
        if self.uses_scores:
            if scores is None:
                raise ValueError(f"this head adds the LM's {self.config.score_input} to its reward: "
                                 "pass scores (the backbone pass must compute log-probs)")
            r = r + self.score_term(scores.to(r.device))
        return r

    @torch.no_grad()
    def drop_hidden_state(self) -> None:
        """Keep only the score part: the reward becomes the LM score's (same ranking, exactly)."""
        nn.init.zeros_(self.reward.weight)
        if self.reward.bias is not None:
            nn.init.zeros_(self.reward.bias)

    def num_parameters(self) -> int:
        """Trainable parameter count (buffers excluded)."""
        return sum(p.numel() for p in self.parameters())
