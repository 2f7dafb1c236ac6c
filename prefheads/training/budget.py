"""How much training data a frozen run can afford: the backbone passes, estimated before they run.

With the feature cache a frozen head costs one backbone pass over its training rows (two where
the fit also reads the LM's scores in the raw view), and nothing after it; so by default a run
takes *all* the training data those passes can cover within ``time_budget`` minutes. The
estimate is the padded tokens the engine will run (:func:`prefheads.engine.plan_tokens`; only
the passes the feature cache does not already hold) over the throughput of a short timed pass
on a sample of the same rows, so it holds for this model, this machine and this data.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefheads.engine import extract, plan_tokens

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel
    from prefheads.training.config import FitConfig
    from prefheads.training.data import Candidates

log = logging.getLogger("prefheads.training.fit")  # what a run logs, under the run's name


@dataclass
class Estimate:
    """Backbone passes, priced before they run.

    Attributes:
        candidates: Candidates to encode.
        tokens: Padded tokens the engine runs over them (every pass still due).
        tokens_per_second: Throughput measured on a sample.
        minutes: ``tokens / tokens_per_second / 60``.
    """

    candidates: int
    tokens: int
    tokens_per_second: float

    @property
    def minutes(self) -> float:
        return self.tokens / max(self.tokens_per_second, 1e-9) / 60


def estimate_pass(pm: PreferenceModel, items: list[Any], logprobs: bool, sample: int = 16) -> Estimate:
    """Price a backbone pass over ``items`` (a timed pass over ``sample`` of them, seeded)."""
    full, shared = plan_tokens(items, pm.max_tokens)
    tokens = min(full, shared) if pm.shared_prefix else full
    pick = sorted(random.Random(0).sample(range(len(items)), min(sample, len(items))))
    part = [items[i] for i in pick]
    extract(pm.backbone, pm.profile, part[:2], [-1], pad_id=pm.tokenizer.pad_token_id or 0)  # warm-up
    t0 = time.perf_counter()
    extract(pm.backbone, pm.profile, part, [-1], pad_id=pm.tokenizer.pad_token_id or 0, logprobs=logprobs,
            shared_prefix=pm.shared_prefix, max_tokens=pm.max_tokens)
    seconds = time.perf_counter() - t0
    p_full, p_shared = plan_tokens(part, pm.max_tokens)
    sample_tokens = min(p_full, p_shared) if pm.shared_prefix else p_full
    return Estimate(len(items), tokens, sample_tokens / max(seconds, 1e-6))


def affordable(n_groups: int, estimate: Estimate, budget_minutes: float) -> int:
    """How many of ``n_groups`` examples a pass of ``budget_minutes`` covers (all if it fits)."""
    if estimate.minutes <= budget_minutes:
        return n_groups
    return max(2, int(n_groups * budget_minutes / estimate.minutes))


def within_budget(cfg: FitConfig, pm: PreferenceModel, cands: Candidates, items: list[Any],
                  recorded: dict[str, Any] | None = None) -> tuple[Candidates, list[Any], dict[str, Any]]:
    """All the training data (and its encoded rows), or the seeded share of it a frozen run's
    backbone passes cover in ``cfg.time_budget``; with what was estimated, for the run's record.

    Args:
        recorded: What this function returned for the run a resumed run continues (its
            checkpoint keeps it): the same examples are taken again, without timing anything, so
            the run goes on with the data and split it started with, whatever the machine's speed
            or the feature cache now holds.
    """
    from prefheads.training.cache import FeatureCache, feature_key
    from prefheads.training.modes import MODES
    from prefheads.training.passes import raw_items, reads_raw_view

    if MODES.get(cfg.mode).trains_backbone or cfg.max_train is not None or not cfg.time_budget:
        return cands, items, {}
    if recorded is not None:
        return budget_share(cfg, cands, items, recorded)
    cache = FeatureCache(cfg.cache_dir, cfg.cache_dtype) if cfg.feature_cache else None

    def due(rows: list[Any]) -> bool:  # a pass the feature cache has not paid for yet
        return bool(rows) and not (cache is not None and cache.has(feature_key(pm.backbone, rows, cfg.cache_dtype)))

    raw = raw_items(cfg, pm, cands) if reads_raw_view(cfg) else []
    chat_due, raw_due = due(items), due(raw)
    if not (chat_due or raw_due):
        return cands, items, {}  # the passes are already paid for
    est = estimate_pass(pm, items, logprobs=cfg.lm_score != "none")
    if not chat_due:
        est.tokens = 0
    if raw_due:  # the raw view's pass runs the same rows again, at the same rate
        full, shared = plan_tokens(raw, pm.max_tokens)
        est.tokens += min(full, shared) if pm.shared_prefix else full
    keep = affordable(len(cands), est, cfg.time_budget)
    info = {"budget": {"minutes": cfg.time_budget, "estimated_seconds": round(est.minutes * 60, 3),
                       "tokens": est.tokens, "tokens_per_second": round(est.tokens_per_second, 1),
                       "examples_available": len(cands), "examples_used": keep}}
    log.warning("backbone passes over %d candidates (%d tokens) estimated at %.1f min (%.0f tokens/s)%s",
                len(items), est.tokens, est.minutes, est.tokens_per_second,
                "" if keep == len(cands) else f"; the {cfg.time_budget:g}-min budget covers {keep} of "
                f"{len(cands)} examples (seeded subset; --max-train {keep} reruns it exactly)")
    return budget_share(cfg, cands, items, info)


def budget_share(cfg: FitConfig, cands: Candidates, items: list[Any],
                 info: dict[str, Any]) -> tuple[Candidates, list[Any], dict[str, Any]]:
    """The seeded subset of ``info``'s ``examples_used`` examples (all of them: as they are):
    what a frozen run trained and validated on, given its record (``FitResult.data``)."""
    budget = info.get("budget") if info else None
    if not budget:  # nothing was capped (the passes were paid for): all the data
        return cands, items, {}
    keep = budget["examples_used"]
    if budget["examples_available"] != len(cands) or not 0 < keep <= len(cands):
        raise ValueError(f"the time budget chose {keep} of {budget['examples_available']} examples, but the "
                         f"training data now holds {len(cands)}: resume with the data the run started with")
    if keep == len(cands):
        return cands, items, info
    pick = sorted(random.Random(cfg.seed).sample(range(len(cands)), keep))
    rows = [r for g in pick for r in [cands.groups[g][0], *cands.groups[g][1]]]
    return cands.subset(pick), [items[r] for r in rows], info
