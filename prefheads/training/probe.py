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
* whether it adds the LM's own score (``--lm-score auto``: with and without), and which: the
  single best score on the training data, or the fitted combination of every score (chat turn
  and raw view: several unpenalised columns, the projection done with a matrix),
* the L2 strength ``λ`` (:data:`L2_GRID`),
* or no head at all: the LM score alone is a candidate too, listed first, so a head that does
  not beat it out of fold is saved as the score alone and reproduces its choices exactly (the
  combination alone is the next candidate).

The winner is refitted on all the training data.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
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
        layer: Hidden state read (None: no hidden state, the LM score(s) alone).
        score: Whether the LM score term is added.
        combo: With ``score``: the fitted combination of several scores instead of the single one.
        l2: L2 strength λ (0 for the score alone).
        cv_accuracy: Out-of-fold choice accuracy (the preferred row scores strictly highest).
    """

    layer: int | None
    score: bool
    l2: float
    cv_accuracy: float = float("nan")
    combo: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        return {"layer": self.layer, "lm_score": self.score, "lm_scores_combined": self.combo, "l2": self.l2,
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

    The scores' part is kept in an orthonormal basis of the centred score columns ``Z = U S Vᵀ``
    (thin SVD, directions below 1e-6 of the largest singular value dropped), so projecting the
    states off several nearly collinear scores (a summed log-prob and its raw-view twin) stays
    exact and positive semi-definite instead of inverting an ill-conditioned ``ZᵀZ``.

    Attributes:
        xx: ``[L, d, d]`` Xᵀ X / n.
        xy: ``[L, d]`` Xᵀ y / n.
        ax: ``[L, S', d]`` Uᵀ X / √n (None without scores).
        ay: ``[S']`` Uᵀ y / √n.
        zmap: ``[S, S']`` V S⁻¹ √n: the score coefficients are ``zmap (ay − ax w)``.
        k: Number of score columns S.
        single: Whether ``z`` was one score ``[M]`` (coefficients then come back as ``[L, J]``).
    """

    xx: torch.Tensor
    xy: torch.Tensor
    ax: torch.Tensor | None = None
    ay: torch.Tensor | None = None
    zmap: torch.Tensor | None = None
    k: int = 1
    single: bool = True


def moments(x: torch.Tensor, idx: torch.Tensor, z: torch.Tensor | None = None) -> Moments:
    """:class:`Moments` of standardised ``x [L, M, d]`` (and scores ``z``: ``[M]`` one, ``[M, S]``
    several) over ``idx``'s groups."""
    xc, y = _centre(x.float(), idx)
    return with_scores(gram(xc, y), xc, y, idx, z)


def gram(xc: torch.Tensor, y: torch.Tensor) -> Moments:
    """The state part of :class:`Moments` from centred rows ``xc [L, R, d]`` and target ``y [R]``."""
    n = len(y)
    xt = xc.transpose(-1, -2)
    return Moments(xx=(xt @ xc).double() / n, xy=(xt @ y).double() / n)


def with_scores(m: Moments, xc: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, z: torch.Tensor | None) -> Moments:
    """``m`` with the score moments of ``z`` (``[M]`` or ``[M, S]``; None: ``m`` itself) added: the
    states' Gram matrix is shared by every score variant of one fold."""
    if z is None:
        return m
    n = len(y)
    zc = _centre(z.double().reshape(len(z), -1)[None], idx)[0][0]  # [R, S]
    u, sv, vh = torch.linalg.svd(zc, full_matrices=False)
    keep = sv > sv.max() * 1e-6 if sv.numel() and float(sv.max()) > 0 else torch.zeros_like(sv, dtype=torch.bool)
    u, sv, vh = u[:, keep], sv[keep], vh[keep]
    root = math.sqrt(n)
    return Moments(xx=m.xx, xy=m.xy, ax=(u.T.to(xc.dtype) @ xc).double() / root, ay=(u.T @ y.double()) / root,
                   zmap=vh.T / sv * root, k=zc.shape[1], single=z.dim() == 1)


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a⁻¹ b`` for symmetric positive-definite ``a [..., d, d]`` (Cholesky; LU where rounding
    left a batch element not quite positive-definite)."""
    chol, info = torch.linalg.cholesky_ex(a)
    out = torch.cholesky_solve(b, chol)
    bad = info != 0
    if bad.any():
        out[bad] = torch.linalg.solve(a[bad], b[bad])
    return out


def ridge_path(m: Moments, l2: Sequence[float], score: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge solutions of every λ from :class:`Moments`; with ``score`` the score columns are
    added unpenalised (the states projected off them first: Frisch–Waugh–Lovell).

    Returns:
        ``(w [L, J, d], c)``: state weights and score coefficients (``[L, J]`` for one score,
        ``[L, J, S]`` for several; None without ``score``).
    """
    xx, xy = m.xx, m.xy
    use = score and m.ax is not None and m.ax.shape[-2] > 0
    if use:  # remove the scores' directions from both sides
        at = m.ax.transpose(-1, -2)
        xx = xx - at @ m.ax
        xy = xy - at @ m.ay
    eye = torch.eye(xx.shape[-1], dtype=xx.dtype)
    w = torch.stack([_solve(xx + lam * eye, xy[..., None])[..., 0] for lam in l2], 1)  # [L, J, d]
    if not score:
        return w, None
    c = (torch.einsum("st,ljt->ljs", m.zmap, m.ay - torch.einsum("ltd,ljd->ljt", m.ax, w)) if use
         else torch.zeros(*w.shape[:2], m.k, dtype=w.dtype))
    return w, c[..., 0] if m.single else c


def _rewards(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``[L, J, M]`` rewards of weights ``w [L, J, d]`` plus the score term: ``c · z`` for one
    score (the coefficient kept positive, as the head's), ``Σ_k c_k z_k`` for several."""
    r = torch.einsum("lmd,ljd->ljm", x.double(), w)
    if c is not None and z.dim() == 1:
        r = r + c.clamp_min(MIN_SCORE_SCALE)[..., None] * z
    elif c is not None:
        r = r + torch.einsum("ms,ljs->ljm", z.double(), c)
    return r


def _combination(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[S]`` least-squares weights of standardised scores ``z [M, S]`` alone (no hidden state)."""
    zc, y = _centre(z.double()[None], idx)
    return torch.linalg.lstsq(zc[0], y[:, None]).solution[:, 0]


def fold_parts(n: int, folds: int, seed: int, clusters: Sequence[Hashable] | None = None) -> list[torch.Tensor]:
    """The held-out group indices of each of ``folds`` seeded folds over ``n`` groups.

    With ``clusters`` (one key per group, e.g. its prompt), groups sharing a key are held out
    together, so no fold scores a prompt its training part saw: each key goes to the fold its
    first group (in data order) has without keys, so groups of a key of their own keep their
    fold.
    """
    parts = [p for p in torch.randperm(n, generator=torch.Generator().manual_seed(seed)).chunk(max(2, min(folds, n)))
             if len(p)]
    if clusters is None or len(set(clusters)) == n:
        return parts
    fold = {g: f for f, p in enumerate(parts) for g in p.tolist()}
    fold_of: dict[Hashable, int] = {}
    for g in range(n):  # a key's first group in data order: its fold is a fair draw
        fold_of.setdefault(clusters[g], fold[g])
    if len(set(fold_of.values())) < 2 <= len(fold_of):  # all in one fold: keys dealt round the folds
        fold_of = {key: j % len(parts) for j, key in enumerate(fold_of)}
    moved = [torch.tensor([g for p in parts for g in p.tolist() if fold_of[clusters[g]] == f], dtype=torch.long)
             for f in range(len(parts))]
    return [p for p in moved if len(p)]


def cross_validate(states: torch.Tensor, s: torch.Tensor | None, groups: Groups, layers: Sequence[int], *,
                   folds: int = 5, l2: Sequence[float] = L2_GRID, seed: int = 0,
                   combo: torch.Tensor | None = None, clusters: Sequence[Hashable] | None = None) -> list[Candidate]:
    """Out-of-fold choice accuracy of every candidate.

    Args:
        states: ``[L, M, d]`` raw states of every row for ``layers``.
        s: ``[M]`` raw LM score of every row, or None.
        groups: Training groups ``(preferred row, [other rows])``.
        layers: Layer of each ``states`` slice.
        folds: K of the K-fold split over groups (seeded by ``seed``).
        l2: The strengths λ searched.
        combo: ``[M, S]`` several raw LM scores, entered together (free weights) as a further
            variant: alone and beside each layer's state.
        clusters: One key per group (its prompt): groups sharing one are held out together
            (:func:`fold_parts`).

    Returns:
        Candidates in preference order for ties: the score alone (with a score), the scores'
        combination alone, then by layer: no score, the score, the combination; larger λ first.
    """
    idx = padded_groups(groups)
    G = len(groups)
    parts = fold_parts(G, folds, seed, clusters)
    variants = ["none"] + (["score"] if s is not None else []) + (["combo"] if combo is not None else [])
    hits = {v: torch.zeros(len(layers), len(l2), dtype=torch.float64) for v in variants}
    score_hits = combo_hits = 0.0
    for p in parts:
        test = torch.zeros(G, dtype=torch.bool)
        test[p] = True
        tr_idx, te_idx = idx[~test], idx[test]
        rows = tr_idx[tr_idx >= 0]
        x = _standardise(states, rows)
        xc, y = _centre(x, tr_idx)
        base = gram(xc, y)
        zs = {"none": None}
        if s is not None:
            zs["score"] = _standardise(s[:, None], rows)[:, 0]
            score_hits += float(group_wins(s, te_idx).double().sum())
        if combo is not None:
            zs["combo"] = _standardise(combo, rows)
            combo_hits += float(group_wins(zs["combo"].double() @ _combination(zs["combo"], tr_idx), te_idx).double().sum())
        for v in variants:
            w, c = ridge_path(with_scores(base, xc, y, tr_idx, zs[v]), l2, score=v != "none")
            hits[v] += group_wins(_rewards(x, w, c, zs[v]), te_idx).double().sum(-1)
    out = []
    if s is not None:
        out.append(Candidate(None, True, 0.0, score_hits / G))
    if combo is not None:
        out.append(Candidate(None, True, 0.0, combo_hits / G, combo=True))
    order = sorted(range(len(l2)), key=lambda j: -l2[j])
    for li, layer in enumerate(layers):
        for v in variants:
            out += [Candidate(layer, v != "none", float(l2[j]), float(hits[v][li, j]) / G, combo=v == "combo")
                    for j in order]
    return out


def best(candidates: Sequence[Candidate]) -> Candidate:
    """The first candidate with the highest cross-validated accuracy."""
    top = max(c.cv_accuracy for c in candidates)
    return next(c for c in candidates if c.cv_accuracy == top or math.isclose(c.cv_accuracy, top, abs_tol=1e-12))


def build_head(pm: PreferenceModel, name: str, states: dict[int, torch.Tensor], s: torch.Tensor | None,
               score_name: str | list[str] | None, groups: Groups, choice: Candidate) -> object:
    """Refit ``choice`` on all of ``groups`` and attach it to ``pm`` as head ``name``.

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel`.
        states: ``{layer: [M, d]}`` raw states of every training row.
        s: Raw LM score(s) of every row: ``[M]`` for ``score_name`` a name, ``[M, S]`` for a
            list of names (the combination; ``choice.combo``); None without.
        choice: The winning candidate; ``layer=None`` gives the LM score(s) alone (the head's
            hidden-state part zeroed: exactly the score's ranking, or the combination's).

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
    z = None
    if choice.score:
        z = _standardise(s[:, None], rows)[:, 0] if s.dim() == 1 else _standardise(s, rows)
    with torch.no_grad():
        if head.reward.bias is not None:
            head.reward.bias.zero_()
        if choice.layer is None:  # the score(s) alone
            head.drop_hidden_state()
            if z is not None and z.dim() == 2:
                head.score_weight.copy_(_combination(z, idx).float())
            return head
        x = _standardise(states[layer][None], rows)
        w, c = ridge_path(moments(x, idx, z), [choice.l2], score=choice.score)
        if c is not None and c.dim() == 2:
            k = float(c[0, 0].clamp_min(MIN_SCORE_SCALE))
            head.score_scale.fill_(k + math.log(-math.expm1(-k)))  # softplus⁻¹(k)
        elif c is not None:
            head.score_weight.copy_(c[0, 0].float())
        head.reward.weight.copy_(w[0, 0].float()[None])
    return head


def choice_accuracy_of(head: Any, feats: Any, values: torch.Tensor | None, groups: list[Any]) -> float:
    """Training choice accuracy of a frozen ``head`` on cached ``feats``."""
    with torch.no_grad():
        r = head(head.select(feats.states), values if head.uses_scores else None)
    return choice_share(r.tolist(), groups)
