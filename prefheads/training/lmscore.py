"""Choosing and checking the LM score a frozen head adds to its reward (``--lm-score``).

The score is chosen on the training split (the registered score with the best choice accuracy),
the head starts from it (a unit-scale score term plus a near-zero hidden-state term, so its first
choices are the score's), and after training the head is compared on the validation split with
the score alone: a head that does not beat it is saved as the score alone, so it reproduces that
score's choices exactly. See :mod:`prefheads.lmscores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prefheads.engine import Features
from prefheads.lmscores import all_scores
from prefheads.training.data import choice_share

Groups = Sequence[tuple[int, list[int]]]


def rule_accuracy(values: torch.Tensor, groups: Groups) -> float:
    """Share of groups whose preferred row scores strictly above every other row (ties miss)."""
    return choice_share(values.tolist(), groups)


def choose_score(feats: Features, completions: Sequence[str], groups: Groups, wanted: str,
                 table: dict[str, torch.Tensor] | None = None) -> tuple[str, dict[str, float]]:
    """The score a head adds: ``wanted`` itself, or for ``"auto"`` the score with the best choice
    accuracy on ``groups`` (the training split; ties keep registry order), among the registered
    scores and, where ``feats`` carries the raw view, their ``raw:`` versions.

    ``table``: the scores already computed (:func:`~prefheads.lmscores.all_scores` of ``feats``).

    Returns:
        ``(name, {score: training choice accuracy})``.
    """
    acc = {n: rule_accuracy(v, groups) for n, v in (table or all_scores(feats, completions)).items()}
    if wanted != "auto":
        return wanted, acc
    order = list(acc)
    return max(acc, key=lambda n: (acc[n], -order.index(n))), acc


@torch.no_grad()
def settle(trainable: Any, values: torch.Tensor, val_groups: Groups) -> dict[str, Any]:
    """Keep the trained head, or reduce it to its score alone when that is as good on validation.

    Args:
        trainable: The frozen trainable (its head already holds the best epoch's weights).
        values: ``[M]`` the head's score of every candidate row.
        val_groups: Validation groups (from the training data only).

    Returns:
        A record for the head's metadata: both validation accuracies and what was kept.
    """
    from prefheads.training.loop import choice_accuracy

    if not val_groups:
        return {"kept": "head", "reason": "no validation split"}
    head_acc = choice_accuracy(trainable, list(val_groups))
    score_acc = rule_accuracy(values, val_groups)
    kept = "head" if head_acc > score_acc else "score"
    if kept == "score":
        trainable.head.drop_hidden_state()
    return {"kept": kept, "val_accuracy_head": round(head_acc, 4), "val_accuracy_score": round(score_acc, 4)}
