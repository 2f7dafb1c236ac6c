"""Preference losses as pure functions: DPH (separable, contrastive), DPO, cDPO and their sum.

Every loss takes tensors and returns ``(loss, metrics)``: ``loss`` is a scalar tensor (the mean
over the batch, differentiable) and ``metrics`` a dict of detached Python floats ready to log.
All losses share the keys ``loss``, ``pair_accuracy`` (fraction of pairs with r_w > r_l),
``margin`` (mean r_w − r_l), ``reward_chosen`` and ``reward_rejected``; the DPO variants report
them for their implicit rewards β·log(π/π_ref) and repeat the first two as ``dpo_accuracy`` and
``dpo_margin``.

Notation follows PAPER.md section 2: r_w is the reward of the preferred completion, r_l of the
dispreferred one, and ε ∈ [0, 0.5] the label-smoothing rate (the assumed probability that a pair's
preference label is flipped). Maths is done in at least float32 whatever the input dtype,
because the log-sigmoid of a bf16 margin loses most of its precision near the optimum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from prefheads.registry import Registry

PAPER_BETA = 0.6
"""DPO temperature β used in the paper's alignment stage (reference code default: 0.1)."""
PAPER_CDPO_EPS = 0.25
"""cDPO label-smoothing ε used in the paper (reference code default: 0.1)."""
PAPER_DPH_EPS = 0.1
"""DPH label-smoothing ε used in the paper and the reference code."""

Metrics = dict[str, float]
LossOutput = tuple[Tensor, Metrics]
DPHLoss = Callable[..., LossOutput]

LOSSES: Registry[DPHLoss] = Registry("dph loss", plugins="prefheads.losses")
"""DPH objectives by name: ``"separable"``, ``"contrastive"`` (pairs) and ``"listwise"`` (all candidates).

A pair loss is ``fn(r_w, r_l, eps) -> (loss, metrics)``; a loss that sees every candidate of a
question sets ``fn.listwise = True`` and is ``fn(r, mask, eps)`` (see :func:`listwise_dph_loss`).
A loss whose rewards read as probabilities through σ sets ``fn.calibrated = True``: evaluation
reports the calibration of its heads.
Losses of installed packages register through the ``prefheads.losses`` entry-point group.
"""


def get_loss(name: str) -> DPHLoss:
    """Return the DPH loss function registered under ``name`` (``"separable"``, ``"contrastive"``).

    Raises:
        KeyError: If ``name`` is unknown; the message lists the known names.
    """
    return LOSSES.get(name)


def _upcast(x: Tensor) -> Tensor:
    """Return ``x`` in float32, or float64 if it already is (never lose precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps <= 0.5:
        raise ValueError(
            f"label-smoothing eps must lie in [0, 0.5] (the probability a preference label is "
            f"flipped), got {eps}"
        )


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.numel() == 0:
        raise ValueError(f"{names} are empty: a loss needs at least one pair")


def _pair_metrics(r_w: Tensor, r_l: Tensor, loss: Tensor) -> Metrics:
    """Detached summary statistics of a batch of reward pairs."""
    r_w, r_l = r_w.detach().float(), r_l.detach().float()
    return {
        "loss": loss.detach().item(),
        "pair_accuracy": (r_w > r_l).float().mean().item(),
        "margin": (r_w - r_l).mean().item(),
        "reward_chosen": r_w.mean().item(),
        "reward_rejected": r_l.mean().item(),
    }


@LOSSES.register("separable")
def separable_dph_loss(r_w: Tensor, r_l: Tensor, eps: float = PAPER_DPH_EPS) -> LossOutput:
    """Separable DPH loss: each reward is a label-smoothed binary logit on its own.

    L = −[(1−ε) log σ(r_w) + ε log σ(−r_w)] − [ε log σ(r_l) + (1−ε) log σ(−r_l)]

    By Theorem 1 the minimiser is r_w = log((1−ε)/ε), r_l = log(ε/(1−ε)), so σ(r) reads as a
    calibrated probability that a completion is preferred.

    Args:
        r_w: Rewards of the preferred completions, shape ``(B,)`` (any shape, matching ``r_l``).
        r_l: Rewards of the dispreferred completions, same shape as ``r_w``.
        eps: Label-smoothing rate in [0, 0.5].

    Returns:
        ``(loss, metrics)``: the batch-mean loss (scalar) and the shared pair metrics plus
        ``sign_accuracy``, the fraction of rewards on the right side of 0 (r_w > 0, r_l < 0).
    """
    _check_eps(eps)
    _check_pair(r_w, r_l, "r_w and r_l")
    w, l = _upcast(r_w), _upcast(r_l)
    per_pair = -((1 - eps) * F.logsigmoid(w) + eps * F.logsigmoid(-w)) - (
        eps * F.logsigmoid(l) + (1 - eps) * F.logsigmoid(-l)
    )
    loss = per_pair.mean()
    metrics = _pair_metrics(r_w, r_l, loss)
    metrics["sign_accuracy"] = 0.5 * ((w > 0).float().mean() + (l < 0).float().mean()).item()
    return loss, metrics


@LOSSES.register("contrastive")
def contrastive_dph_loss(r_w: Tensor, r_l: Tensor, eps: float = PAPER_DPH_EPS) -> LossOutput:
    """Contrastive DPH loss: a label-smoothed Bradley–Terry loss on the reward margin.

    L = −(1−ε) log σ(r_w − r_l) − ε log σ(r_l − r_w)

    By Theorem 2 the minimiser is any pair with margin r_w − r_l = log((1−ε)/ε); the rewards'
    offset is unconstrained, so only their ordering is meaningful.

    Args:
        r_w: Rewards of the preferred completions, shape ``(B,)`` (any shape, matching ``r_l``).
        r_l: Rewards of the dispreferred completions, same shape as ``r_w``.
        eps: Label-smoothing rate in [0, 0.5].

    Returns:
        ``(loss, metrics)``: the batch-mean loss (scalar) and the shared pair metrics.
    """
    _check_eps(eps)
    _check_pair(r_w, r_l, "r_w and r_l")
    m = _upcast(r_w) - _upcast(r_l)
    loss = (-(1 - eps) * F.logsigmoid(m) - eps * F.logsigmoid(-m)).mean()
    return loss, _pair_metrics(r_w, r_l, loss)


@LOSSES.register("listwise")
def listwise_dph_loss(r: Tensor, mask: Tensor, eps: float = PAPER_DPH_EPS) -> LossOutput:
    """Listwise DPH loss: a label-smoothed softmax over all candidates of a question.

    L = −(1−ε) log softmax(r)_0 − ε · mean_{j>0} log softmax(r)_j

    Column 0 holds the preferred candidate; ε spreads the label-smoothing mass over the others.
    Like the contrastive loss only the ordering within a question matters (a per-question offset
    cancels), and every wrong answer is seen at every step instead of one sampled per epoch. With
    two candidates and ε = 0 it equals the contrastive loss.

    Args:
        r: Rewards, shape ``(B, K)``; column 0 is the preferred candidate.
        mask: ``(B, K)`` bool, True where a candidate exists (questions may have fewer than K).
        eps: Label-smoothing rate in [0, 0.5].

    Returns:
        ``(loss, metrics)``: the batch-mean loss and the pair metrics of the preferred candidate
        against its best-scored competitor, plus ``choice_accuracy`` (preferred scores highest).
    """
    _check_eps(eps)
    if r.dim() != 2 or r.shape != mask.shape or r.shape[1] < 2:
        raise ValueError(f"listwise rewards must be (B, K >= 2) with a matching mask, got {tuple(r.shape)} "
                         f"and {tuple(mask.shape)}")
    if not bool(mask[:, 0].all()) or not bool(mask[:, 1:].any(1).all()):
        raise ValueError("every row needs its preferred candidate in column 0 and at least one other")
    x = _upcast(r).masked_fill(~mask, float("-inf"))
    logp = torch.log_softmax(x, dim=1)
    others = mask[:, 1:].to(logp.dtype)
    rest = (logp[:, 1:].masked_fill(~mask[:, 1:], 0.0) * others).sum(1) / others.sum(1)
    loss = (-(1 - eps) * logp[:, 0] - eps * rest).mean()
    best_other = x[:, 1:].max(1).values
    metrics = _pair_metrics(r[:, 0], best_other.to(r.dtype), loss)
    metrics["choice_accuracy"] = metrics["pair_accuracy"]
    return loss, metrics


listwise_dph_loss.listwise = True  # type: ignore[attr-defined]
separable_dph_loss.calibrated = True  # type: ignore[attr-defined]  # σ(r) converges to P(preferred), Theorem 1


def is_listwise(name: str) -> bool:
    """Whether DPH loss ``name`` sees every candidate of a question (``(r, mask)``) rather than pairs."""
    return bool(getattr(LOSSES.get(name), "listwise", False))


def is_calibrated(name: str | None) -> bool:
    """Whether heads trained with DPH loss ``name`` give rewards that read as probabilities through σ
    (False for a name not registered here, e.g. a plugin that is not installed)."""
    return name in LOSSES and bool(getattr(LOSSES.get(name), "calibrated", False))


def _implicit_rewards(
    policy_logp_w: Tensor,
    policy_logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    if beta <= 0:
        raise ValueError(f"DPO beta must be positive, got {beta}")
    others = {"policy_logp_l": policy_logp_l, "ref_logp_w": ref_logp_w, "ref_logp_l": ref_logp_l}
    for name, t in others.items():
        _check_pair(policy_logp_w, t, f"policy_logp_w and {name}")
    # The reference model is frozen: no gradient flows into it even if the caller forgot no_grad.
    chosen = beta * (_upcast(policy_logp_w) - _upcast(ref_logp_w.detach()))
    rejected = beta * (_upcast(policy_logp_l) - _upcast(ref_logp_l.detach()))
    return chosen, rejected


def _dpo_metrics(chosen: Tensor, rejected: Tensor, loss: Tensor) -> Metrics:
    metrics = _pair_metrics(chosen, rejected, loss)
    metrics["dpo_accuracy"] = metrics["pair_accuracy"]
    metrics["dpo_margin"] = metrics["margin"]
    return metrics


def dpo_loss(
    policy_logp_w: Tensor,
    policy_logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float = 0.1,
) -> LossOutput:
    """DPO loss: L = −log σ(β·[log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)]).

    Args:
        policy_logp_w: Policy log-probabilities of the preferred completions (summed, or
            averaged, over their tokens), shape ``(B,)``.
        policy_logp_l: Policy log-probabilities of the dispreferred completions, shape ``(B,)``.
        ref_logp_w: Reference-model log-probabilities of the preferred completions, ``(B,)``;
            treated as constants.
        ref_logp_l: Reference-model log-probabilities of the dispreferred completions, ``(B,)``.
        beta: Temperature β > 0 (reference-code default 0.1; the paper uses :data:`PAPER_BETA`).

    Returns:
        ``(loss, metrics)``; the reward metrics are those of the implicit rewards
        β·(log π − log π_ref).
    """
    chosen, rejected = _implicit_rewards(policy_logp_w, policy_logp_l, ref_logp_w, ref_logp_l, beta)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, _dpo_metrics(chosen, rejected, loss)


def cdpo_loss(
    policy_logp_w: Tensor,
    policy_logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float = 0.1,
    eps: float = 0.1,
) -> LossOutput:
    """Conservative DPO: (1−ε)·L_DPO(x, y_w, y_l) + ε·L_DPO(x, y_l, y_w).

    Args:
        policy_logp_w: Policy log-probabilities of the preferred completions, shape ``(B,)``.
        policy_logp_l: Policy log-probabilities of the dispreferred completions, shape ``(B,)``.
        ref_logp_w: Reference-model log-probabilities of the preferred completions, ``(B,)``.
        ref_logp_l: Reference-model log-probabilities of the dispreferred completions, ``(B,)``.
        beta: Temperature β > 0 (reference-code default 0.1; paper :data:`PAPER_BETA` = 0.6).
        eps: Label-smoothing ε in [0, 0.5] (reference-code default 0.1; paper
            :data:`PAPER_CDPO_EPS` = 0.25). ε = 0 is plain DPO.

    Returns:
        ``(loss, metrics)`` as for :func:`dpo_loss`.
    """
    _check_eps(eps)
    chosen, rejected = _implicit_rewards(policy_logp_w, policy_logp_l, ref_logp_w, ref_logp_l, beta)
    logits = chosen - rejected
    loss = (-(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)).mean()
    return loss, _dpo_metrics(chosen, rejected, loss)


def joint_loss(
    dph: LossOutput | Tensor,
    dpo: LossOutput | Tensor,
    alpha_dpo: float = 1.0,
    alpha_dph: float = 1.0,
) -> LossOutput:
    """Joint alignment objective α_dpo·L_cDPO + α_dph·L_DPH (paper: α_dpo = α_dph = 1).

    Args:
        dph: The output of a DPH loss, ``(loss, metrics)``, or a bare scalar loss tensor.
        dpo: The output of :func:`cdpo_loss` / :func:`dpo_loss`, or a bare scalar loss tensor.
        alpha_dpo: Weight of the (c)DPO term.
        alpha_dph: Weight of the DPH term.

    Returns:
        ``(loss, metrics)``: the weighted sum, and the two metric dicts merged with keys
        prefixed ``dph/`` and ``dpo/``, plus the total under ``loss``.

    Example:
        >>> loss, m = joint_loss(separable_dph_loss(r_w, r_l), cdpo_loss(pw, pl, rw, rl))
    """
    dph_loss, dph_metrics = _split(dph)
    dpo_loss_value, dpo_metrics = _split(dpo)
    loss = alpha_dpo * dpo_loss_value + alpha_dph * dph_loss
    metrics: Metrics = {"loss": loss.detach().item()}
    metrics.update({f"dph/{k}": v for k, v in dph_metrics.items()})
    metrics.update({f"dpo/{k}": v for k, v in dpo_metrics.items()})
    return loss, metrics


def _split(out: LossOutput | Tensor) -> tuple[Tensor, Mapping[str, float]]:
    if isinstance(out, Tensor):
        return out, {"loss": out.detach().item()}
    loss, metrics = out
    return loss, metrics
