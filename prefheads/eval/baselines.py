"""The baselines a head must beat: log-prob scored exactly as lm-evaluation-harness scores a task,
and the strongest method without a head (log-prob rules, and for preference pairs the length-only
rule of :mod:`prefheads.eval.margins`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prefheads.types import Example

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

LMEVAL_PREFIX = "lm-eval:"
LMEVAL_METHODS = tuple(f"{LMEVAL_PREFIX}{m}" for m in ("acc", "acc_norm", "mean"))
"""Method names of lm-evaluation-harness-exact log-prob scoring (:mod:`prefheads.eval.lmeval`)."""


def lmeval_tables(pm: PreferenceModel, name: str, exs: Sequence[Example], *, variant: str = "paper", data_dir: Any = None,
                  max_eval: int | None = None, seed: int = 0,
                  shuffle: bool = False) -> tuple[dict[str, list[list[float]]], dict[str, Any]]:
    """lm-evaluation-harness-exact log-prob tables of the rows ``exs`` of task ``name``.

    ``exs`` were loaded from the eval split with template ``variant`` and ``max_eval`` / ``seed``
    / ``shuffle``; the same rows are loaded again in the ``lm-eval`` rendering (unless they are
    that already), matched by id (labels and choice counts checked) and scored by
    :func:`prefheads.eval.lmeval.score_lmeval`.

    Returns:
        ``(tables, info)``: method (``lm-eval:acc``, ``lm-eval:acc_norm``, ``lm-eval:mean``) ->
        scores per example, and the harness version, boundary mismatches, truncation and seconds
        (``{"available": False, "why"}`` and no tables where the harness lacks the task).
    """
    from prefheads import tasks
    from prefheads.eval.lmeval import score_lmeval
    from prefheads.tasks.harness import HARNESS_VERSION, LM_EVAL_VARIANT

    spec, base = tasks.get_task(name, variant), tasks.get_task(name)
    if spec.kind != "choice" or base.lm_eval is None:
        return {}, {"available": False,
                    "why": f"lm-evaluation-harness {HARNESS_VERSION} defines no {spec.name} task"}
    if spec.variant == LM_EVAL_VARIANT:
        lexs = list(exs)
    else:  # the same rows, rendered as the harness renders them
        loaded = tasks.load_examples(name, "eval", data_dir, limit=max_eval, seed=seed,
                                     shuffle=shuffle, variant=LM_EVAL_VARIANT)
        by_id = {ex.id: ex for ex in loaded}
        lost = [ex.id for ex in exs if ex.id not in by_id]
        if lost or len(by_id) != len(loaded):
            raise ValueError(f"task {spec.name!r}: rows {lost[:3] or 'with duplicate ids'} have no unique "
                             "lm-eval rendering")
        lexs = [by_id[ex.id] for ex in exs]
        bad = [ex.id for ex, lx in zip(exs, lexs) if lx.label != ex.label or len(lx.choices) != len(ex.choices)]
        if bad:
            raise ValueError(f"task {spec.name!r}: rows {bad[:3]} differ in label or choices between templates")
    sc = score_lmeval(pm, lexs)
    info = {"available": True, "harness": f"lm_eval=={HARNESS_VERSION}", "task": base.lm_eval.task,
            "boundary_mismatches": sc.boundary_mismatches, "truncated": sc.truncated,
            "seconds": round(sc.seconds, 3)}
    return sc.methods(prefix=LMEVAL_PREFIX), info


def baseline_of(blocks: dict[str, Any], key: str = "score") -> dict[str, Any] | None:
    """The strongest method without a head in a task's method blocks (the baseline a head must beat).

    These are the log-prob methods and, for preference pairs, the length-only baseline
    (:data:`~prefheads.eval.margins.LENGTH`): a head that does not beat "the longer reply wins" has
    not shown it learned more than length, so the margin is taken over the stronger of them.

    Args:
        blocks: Method name -> block holding its score under ``key``.
        key: The score to compare (``score`` in results, ``accuracy`` in :func:`summarize`).

    Returns ``{"method", "score"}`` (first of equal scores), or None without log-prob methods.
    """
    base = [m for m in blocks if not m.startswith("dph:")]
    if not base:
        return None
    best = max(base, key=lambda m: blocks[m][key])
    return {"method": best, "score": blocks[best][key]}
