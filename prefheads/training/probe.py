"""Linear heads in closed form, their layer, LM score and L2 strength cross-validated.

The default frozen head is linear: an input standardiser, a reward vector ``w`` and, for a
log-prob-aware head, the LM-score term ``softplus(a) · (s - μ) / σ``
(:class:`~prefheads.heads.RewardHead` with the identity pooler). With the backbone frozen it is
fitted in closed form as a ridge regression: standardised states, centred within each question,
regressed on the centred one-hot "this is the preferred answer" target (only the ordering within
a question matters, so a per-question offset is removed from both sides),

    (w, c) = argmin ‖X_c w + c z_c − y_c‖² / n + λ ‖w‖²,

the LM score ``z`` (standardised) entering as one more column that is not penalised (so a
strong score is not shrunk toward zero with the hidden-state weights): both sides are first
projected off ``z_c`` (Frisch–Waugh–Lovell), ``w`` is a plain ridge fit of the residuals and
``c`` the least-squares coefficient of what is left. One pass of second moments per layer
and fold (then a Cholesky solve per λ) gives every λ, so what a user would otherwise guess is chosen by K-fold
cross-validation on the training data, by choice accuracy (the preferred answer must score
strictly highest):

* which layer's state the head reads (``--layer auto``: each candidate layer),
* whether it adds the LM's own score (``--lm-score auto``: with and without),
* the L2 strength ``λ`` (:data:`L2_GRID`),
* or no head at all: the LM score alone is a candidate too, listed first, so a head that does
  not beat it out of fold is saved as the score alone and reproduces its choices exactly.

The winner is refitted on all the training data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prefheads.training.data import group_wins, padded_groups

from prefheads.training.data import choice_share

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

Groups = Sequence[tuple[int, list[int]]]

L2_GRID = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
"""L2 strengths λ searched (inputs are standardised; the squared error is a per-row mean)."""

STD_EPS = 1e-6
MIN_SCORE_SCALE = 1e-6
"""A score coefficient the fit makes ≤ 0 is raised to this (the head's score scale is positive)."""


@dataclass(frozen=True)
class Candidate:
    """One cross-validated configuration.

    Attributes:
        layer: Hidden state read (None: no hidden state, the LM score alone).
        score: Whether the LM score term is added.
        l2: L2 strength λ (0 for the score alone).
        cv_accuracy: Out-of-fold choice accuracy (the preferred row scores strictly highest).
    """

    layer: int | None
    score: bool
    l2: float
    cv_accuracy: float = float("nan")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        return {"layer": self.layer, "lm_score": self.score, "l2": self.l2,
                "cv_accuracy": round(self.cv_accuracy, 4)}


def _standardise(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x`` (``[..., M, p]``) standardised per column with the mean / std of ``rows`` (fp32, as the head)."""
    x = x.float()
    ref = x[..., rows, :]
    sd = ref.std(-2, keepdim=True).clamp_min(STD_EPS) if len(rows) > 1 else torch.ones_like(ref[..., :1, :])
    return (x - ref.mean(-2, keepdim=True)) / sd


def _centre(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``idx``'s groups with their group's mean removed, and the centred one-hot target.

    Args:
        x: ``[..., M, p]`` features of every row.
        idx: ``[G, K]`` group matrix.

    Returns:
        ``(x_c [..., R, p], y_c [R])`` over the ``R`` rows of the groups, in group order.
    """
    mask = idx >= 0
    rows = idx[mask]
    gid = torch.arange(len(idx))[:, None].expand_as(idx)[mask]
    size = mask.sum(1).to(x.dtype)
    sums = torch.zeros(*x.shape[:-2], len(idx), x.shape[-1], dtype=x.dtype).index_add_(-2, gid, x[..., rows, :])
    xc = x[..., rows, :] - (sums / size[:, None])[..., gid, :]
    first = torch.zeros_like(mask)
    first[:, 0] = True
    y = first[mask].to(x.dtype) - 1.0 / size[gid]
    return xc, y


@dataclass
class Moments:
    """Second moments of question-centred rows: what every ridge solution needs.

    Attributes:
        xx: ``[L, d, d]`` Xᵀ X / n.
        xy: ``[L, d]`` Xᵀ y / n.
        xz: ``[L, d]`` Xᵀ z / n (None without a score).
        zz: zᵀ z / n.
        zy: zᵀ y / n.
    """

    xx: torch.Tensor
    xy: torch.Tensor
    xz: torch.Tensor | None = None
    zz: float = 0.0
    zy: float = 0.0


def moments(x: torch.Tensor, idx: torch.Tensor, z: torch.Tensor | None = None) -> Moments:
    """:class:`Moments` of standardised ``x [L, M, d]`` (and score ``z [M]``) over ``idx``'s groups."""
    xc, y = _centre(x.float(), idx)
    n = len(y)
    xt = xc.transpose(-1, -2)
    m = Moments(xx=(xt @ xc).double() / n, xy=(xt @ y).double() / n)
    if z is not None:
        zc = _centre(z.float()[None, :, None], idx)[0][0, :, 0]
        m.xz, m.zz, m.zy = (xt @ zc).double() / n, float(zc @ zc) / n, float(zc @ y) / n
    return m


def ridge_path(m: Moments, l2: Sequence[float], score: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge solutions of every λ from :class:`Moments`; with ``score`` the score column is added
    unpenalised (the states projected off it first).

    Returns:
        ``(w [L, J, d], c [L, J] or None)``: state weights and score coefficients.
    """
    xx, xy = m.xx, m.xy
    use = score and m.xz is not None and m.zz > 0
    if use:  # Frisch–Waugh–Lovell: remove the score's direction from both sides
        xx = xx - m.xz[..., :, None] * m.xz[..., None, :] / m.zz
        xy = xy - m.xz * m.zy / m.zz
    eye = torch.eye(xx.shape[-1], dtype=xx.dtype)
    w = torch.stack([torch.cholesky_solve(xy[..., None], torch.linalg.cholesky(xx + lam * eye))[..., 0]
                     for lam in l2], 1)  # [L, J, d]
    if not score:
        return w, None
    if not use:
        return w, torch.zeros(w.shape[:2], dtype=w.dtype)
    return w, (m.zy - torch.einsum("ld,ljd->lj", m.xz, w)) / m.zz


def _rewards(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``[L, J, M]`` rewards of weights ``w [L, J, d]`` (+ ``c · z``, the coefficient kept positive)."""
    r = torch.einsum("lmd,ljd->ljm", x.double(), w)
    if c is not None:
        r = r + c.clamp_min(MIN_SCORE_SCALE)[..., None] * z
    return r


def cross_validate(states: torch.Tensor, s: torch.Tensor | None, groups: Groups, layers: Sequence[int], *,
                   folds: int = 5, l2: Sequence[float] = L2_GRID, seed: int = 0) -> list[Candidate]:
    """Out-of-fold choice accuracy of every candidate.

    Args:
        states: ``[L, M, d]`` raw states of every row for ``layers``.
        s: ``[M]`` raw LM score of every row, or None.
        groups: Training groups ``(preferred row, [other rows])``.
        layers: Layer of each ``states`` slice.
        folds: K of the K-fold split over groups (seeded by ``seed``).
        l2: The strengths λ searched.

    Returns:
        Candidates in preference order for ties: the score alone (with a score), then by layer,
        without the score before with it, larger λ first.
    """
    idx = padded_groups(groups)
    G = len(groups)
    perm = torch.randperm(G, generator=torch.Generator().manual_seed(seed))
    parts = [p for p in perm.chunk(max(2, min(folds, G))) if len(p)]
    variants = [False] + ([True] if s is not None else [])
    hits = {v: torch.zeros(len(layers), len(l2), dtype=torch.float64) for v in variants}
    score_hits = 0.0
    for p in parts:
        test = torch.zeros(G, dtype=torch.bool)
        test[p] = True
        tr_idx, te_idx = idx[~test], idx[test]
        rows = tr_idx[tr_idx >= 0]
        x = _standardise(states, rows)
        z = _standardise(s[:, None], rows)[:, 0] if s is not None else None
        stats = moments(x, tr_idx, z)
        for v in variants:
            w, c = ridge_path(stats, l2, score=v)
            hits[v] += group_wins(_rewards(x, w, c, z), te_idx).double().sum(-1)
        if s is not None:
            score_hits += float(group_wins(s, te_idx).double().sum())
    out = []
    if s is not None:
        out.append(Candidate(None, True, 0.0, score_hits / G))
    order = sorted(range(len(l2)), key=lambda j: -l2[j])
    for li, layer in enumerate(layers):
        for v in variants:
            out += [Candidate(layer, v, float(l2[j]), float(hits[v][li, j]) / G) for j in order]
    return out


def best(candidates: Sequence[Candidate]) -> Candidate:
    """The first candidate with the highest cross-validated accuracy."""
    top = max(c.cv_accuracy for c in candidates)
    return next(c for c in candidates if c.cv_accuracy == top or math.isclose(c.cv_accuracy, top, abs_tol=1e-12))


def build_head(pm: PreferenceModel, name: str, states: dict[int, torch.Tensor], s: torch.Tensor | None,
               score_name: str | None, groups: Groups, choice: Candidate) -> object:
    """Refit ``choice`` on all of ``groups`` and attach it to ``pm`` as head ``name``.

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel`.
        states: ``{layer: [M, d]}`` raw states of every training row.
        s: ``[M]`` raw LM score ``score_name`` of every row (None without).
        choice: The winning candidate; ``layer=None`` gives the LM score alone (the head's
            hidden-state part zeroed: exactly the score's ranking).

    Returns:
        The attached :class:`~prefheads.heads.RewardHead` (identity pooler, no dropout), whose
        rewards are the refitted ridge predictor's (up to float rounding).
    """
    idx = padded_groups(groups)
    rows = idx[idx >= 0]
    layer = choice.layer if choice.layer is not None else max(states)
    head = pm.add_head(name, "identity", layer=layer, dropout=0.0,
                       score_input=score_name if choice.score else None)
    head.fit_standardizer(states[layer][rows])
    if choice.score:
        head.fit_score_standardizer(s[rows])
    with torch.no_grad():
        if head.reward.bias is not None:
            head.reward.bias.zero_()
        if choice.layer is None:  # the score alone
            head.drop_hidden_state()
            return head
        x = _standardise(states[layer][None], rows)
        z = _standardise(s[:, None], rows)[:, 0] if choice.score else None
        w, c = ridge_path(moments(x, idx, z), [choice.l2], score=choice.score)
        if c is not None:
            k = float(c[0, 0].clamp_min(MIN_SCORE_SCALE))
            head.score_scale.fill_(k + math.log(-math.expm1(-k)))  # softplus⁻¹(k)
        head.reward.weight.copy_(w[0, 0].float()[None])
    return head


def choice_accuracy_of(head: Any, feats: Any, values: torch.Tensor | None, groups: list[Any]) -> float:
    """Training choice accuracy of a frozen ``head`` on cached ``feats``."""
    with torch.no_grad():
        r = head(head.select(feats.states), values if head.uses_scores else None)
    return choice_share(r.tolist(), groups)
