"""How much training data a frozen run can afford: the backbone pass, estimated before it runs.

With the feature cache a frozen head costs one backbone pass over its training rows, and nothing
after it; so by default a run takes *all* the training data that pass can cover within
``time_budget`` minutes. The estimate is the padded tokens the engine will run
(:func:`prefheads.engine.plan_tokens`) over the throughput of a short timed pass on a sample of
the same rows, so it holds for this model, this machine and this data.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefheads.engine import extract, plan_tokens

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


@dataclass
class Estimate:
    """A backbone pass, priced before it runs.

    Attributes:
        candidates: Candidates to encode.
        tokens: Padded tokens the engine runs over them.
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
