"""Prior regularization (decay toward the starting weights) and the warmup–cosine schedule.

Weight decay pulls parameters toward 0, which for a pre-trained model means toward a model that
knows nothing. The paper (PAPER.md section 3) instead decays toward the starting weights θ_ref,
the decoupled form of the penalty λ/2·‖θ − θ_ref‖²:

    θ ← θ − lr·λ·(θ − θ_ref)

:class:`PriorRegularizer` applies that update after any torch optimizer's step, either called by
hand (``prior.step(lr)``) or attached to the optimizer (``prior.attach(optimizer)``), in which case
it runs after every ``optimizer.step()`` with each parameter group's current learning rate.
Applying it after the optimizer step rather than before it (as AdamW does for its decay) differs
only at second order in lr.

Example:
    >>> groups, prior = prior_param_groups(model.named_parameters(), coefficient=0.5,
    ...                                    exclude=("embed_tokens", "lm_head"))
    >>> optimizer = torch.optim.AdamW(groups, lr=3e-5)
    >>> prior.attach(optimizer)
    >>> scheduler = warmup_cosine_schedule(optimizer, warmup_steps=200, total_steps=6144)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.hooks import RemovableHandle

NamedParams = Iterable[tuple[str, Tensor]]
ParamsLike = nn.Module | Iterable[Tensor] | NamedParams


def _as_named(params: ParamsLike) -> list[tuple[str, Tensor]]:
    """Normalise a module, an iterable of tensors or of ``(name, tensor)`` pairs to named pairs."""
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    named = []
    for i, item in enumerate(params):
        if isinstance(item, Tensor):
            named.append((str(i), item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            named.append((str(item[0]), item[1]))
        else:
            raise TypeError(
                f"expected tensors or (name, tensor) pairs, got {type(item).__name__} at {i}"
            )
    return named


class PriorRegularizer:
    """Decoupled decay of parameters toward a snapshot of their starting values.

    Only parameters that require grad are tracked: frozen ones never leave θ_ref anyway.

    Args:
        params: A module, an iterable of parameters, or of ``(name, parameter)`` pairs (as from
            ``named_parameters()``), snapshotted now as θ_ref.
        coefficient: Decay strength λ ≥ 0 (paper: 0.5).
        ref_dtype: Optional dtype for the θ_ref copy (e.g. ``torch.bfloat16`` to halve its
            memory); ``None`` keeps each parameter's dtype. The copy lives on the parameter's
            device.
    """

    def __init__(
        self,
        params: ParamsLike,
        coefficient: float = 0.5,
        ref_dtype: torch.dtype | None = None,
    ) -> None:
        if coefficient < 0:
            raise ValueError(f"prior coefficient must be >= 0, got {coefficient}")
        self.coefficient = float(coefficient)
        named = [(n, p) for n, p in _as_named(params) if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        with torch.no_grad():
            self.refs = [p.detach().clone().to(dtype=ref_dtype or p.dtype) for p in self.params]
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def __len__(self) -> int:
        return len(self.params)

    def _check_weight(self, lr: float) -> float:
        weight = float(lr) * self.coefficient
        if not 0.0 <= weight <= 1.0:
            # lr·λ > 1 would overshoot θ_ref and oscillate; < 0 would push away from it.
            raise ValueError(f"lr * coefficient must lie in [0, 1], got {lr} * {self.coefficient}")
        return weight

    @torch.no_grad()
    def _decay(self, indices: Iterable[int], weight: float) -> None:
        if weight == 0.0:
            return
        for i in indices:
            p, ref = self.params[i], self.refs[i]
            # θ.lerp_(θ_ref, w) = θ − w·(θ − θ_ref)
            p.lerp_(ref.to(p.dtype), weight)

    def step(self, lr: float) -> None:
        """Apply θ ← θ − lr·λ·(θ − θ_ref) in place to every tracked parameter.

        Args:
            lr: The learning rate of the optimizer step just taken.
        """
        self._decay(range(len(self.params)), self._check_weight(lr))

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Run the decay after every ``optimizer.step()``, using each group's current ``lr``.

        Tracked parameters absent from ``optimizer`` are not decayed.

        Returns:
            A handle; ``handle.remove()`` detaches the regularizer.
        """

        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            for group in opt.param_groups:
                indices = [self._index[id(p)] for p in group["params"] if id(p) in self._index]
                if indices:
                    self._decay(indices, self._check_weight(group["lr"]))

        return optimizer.register_step_post_hook(hook)

    @torch.no_grad()
    def sq_distance(self) -> float:
        """Return ‖θ − θ_ref‖² over the tracked parameters (for logging drift)."""
        pairs = zip(self.params, self.refs)
        return float(sum(((p.float() - r.float()) ** 2).sum() for p, r in pairs))

    def state_dict(self) -> dict[str, Any]:
        """Return the coefficient, parameter names and θ_ref tensors, for resuming."""
        return {"coefficient": self.coefficient, "names": list(self.names), "refs": list(self.refs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore θ_ref from :meth:`state_dict` (names and shapes must match)."""
        if list(state["names"]) != self.names:
            raise ValueError("prior state holds different parameters than this regularizer")
        for name, mine, theirs in zip(self.names, self.refs, state["refs"]):
            if mine.shape != theirs.shape:
                raise ValueError(f"θ_ref shape mismatch for {name}: {mine.shape} vs {theirs.shape}")
            mine.copy_(theirs)
        self.coefficient = float(state["coefficient"])


def prior_param_groups(
    params: nn.Module | NamedParams,
    coefficient: float = 0.5,
    exclude: Sequence[str] | Callable[[str], bool] = (),
    weight_decay: float = 0.0,
    ref_dtype: torch.dtype | None = None,
) -> tuple[list[dict[str, Any]], PriorRegularizer]:
    """Split trainable parameters into a prior-regularized group and an excluded group.

    The prior group gets ``weight_decay=0`` (the prior replaces decay toward 0); the excluded
    group gets ``weight_decay``. Paper: SFT regularizes all non-embedding parameters
    (``exclude=("embed",)``), DPH alignment all parameters (``exclude=()``).

    Args:
        params: A module or ``named_parameters()`` pairs; frozen parameters are skipped.
        coefficient: Prior strength λ.
        exclude: Name substrings, or a predicate on the name, selecting parameters to leave
            out of the prior.
        weight_decay: Ordinary decay for the excluded parameters.
        ref_dtype: dtype of the θ_ref snapshot (see :class:`PriorRegularizer`).

    Returns:
        ``(groups, prior)``: optimizer parameter groups (empty groups dropped; each carries a
        ``"name"`` key, ``"prior"`` or ``"no_prior"``) and the regularizer over the prior group,
        not yet attached to any optimizer.
    """
    if callable(exclude):
        is_excluded = exclude
    else:
        patterns = tuple(exclude)
        is_excluded = lambda name: any(s in name for s in patterns)  # noqa: E731
    named = [(n, p) for n, p in _as_named(params) if p.requires_grad]
    with_prior = [(n, p) for n, p in named if not is_excluded(n)]
    without = [p for n, p in named if is_excluded(n)]
    groups = [
        {"name": "prior", "params": [p for _, p in with_prior], "weight_decay": 0.0},
        {"name": "no_prior", "params": without, "weight_decay": weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    return groups, PriorRegularizer(with_prior, coefficient, ref_dtype=ref_dtype)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup, then cosine decay from the base lr to ``final_lr_ratio``·lr.

    The multiplier at step ``s`` (0-based, the number of ``scheduler.step()`` calls so far) is
    ``(s + 1) / warmup_steps`` during warmup, so the first update already has a non-zero lr and
    step ``warmup_steps − 1`` has the full lr; then ``r + (1 − r)·(1 + cos(π·t))/2`` with
    ``t = (s − warmup_steps) / (total_steps − warmup_steps)`` clipped to [0, 1]. It reaches ``r``
    at ``total_steps`` and stays there. Paper DPH stage: 3e-6 → 3e-7 is ``final_lr_ratio=0.1``.

    Args:
        optimizer: The optimizer whose group lrs are scaled.
        warmup_steps: Number of warmup steps (0 for none).
        total_steps: Total number of optimizer steps, ``> warmup_steps`` unless both are 0.
        final_lr_ratio: Final lr as a fraction of the base lr, in [0, 1].
    """
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, "
            f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ValueError(f"final_lr_ratio must lie in [0, 1], got {final_lr_ratio}")
    decay_steps = max(1, total_steps - warmup_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / decay_steps)
        return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return LambdaLR(optimizer, multiplier)


@torch.no_grad()
def clip_grad_norms_(grads: Sequence[Tensor], max_norm: float) -> Tensor:
    """Clip each head's gradient to norm ``max_norm`` in place, as ``clip_grad_norm_`` does alone.

    Args:
        grads: Stacked gradients, each ``[N, ...]`` (slice i belongs to head i).
        max_norm: The clip.

    Returns:
        ``[N]`` each head's gradient norm before clipping.
    """
    n = grads[0].shape[0]
    per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(n, -1), 2, dim=1) for g in grads])  # [P, N]
    total = torch.linalg.vector_norm(per_tensor, 2, dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(n, *[1] * (g.dim() - 1)))
    return total
