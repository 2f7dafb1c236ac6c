"""Scoring labelled multiple-choice examples both ways from one backbone pass.

* log-prob: the candidate with the highest *mean* log-probability of its assistant tokens
  (the end-of-turn token included, as in the reference code);
* DPH: the candidate with the highest reward at its end-of-turn token, for every head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefheads.metrics import accuracy, choose, prediction_distribution
from prefheads.types import Example


@dataclass
class ChoiceScores:
    """Per-example candidate scores of one task.

    Attributes:
        examples: The scored examples.
        logprob: Mean log-prob per candidate, per example.
        logprob_sum: Summed log-prob per candidate, per example.
        rewards: head name -> reward per candidate, per example.
    """

    examples: list[Example]
    logprob: list[list[float]] = field(default_factory=list)
    logprob_sum: list[list[float]] = field(default_factory=list)
    rewards: dict[str, list[list[float]]] = field(default_factory=dict)

    def methods(self) -> dict[str, list[list[float]]]:
        """Score tables by method name (``logprob``, ``dph:<head>``)."""
        out = {"logprob": self.logprob}
        out.update({f"dph:{h}": r for h, r in self.rewards.items()})
        return out


def score_examples(pm: Any, examples: Sequence[Example], heads: Sequence[str] | None = None,
                   logprobs: bool = True) -> ChoiceScores:
    """Score every candidate of every example, all heads and log-prob from one pass."""
    examples = list(examples)
    prompts = [ex.prompt for ex in examples for _ in ex.choices]
    comps = [c for ex in examples for c in ex.choices]
    heads = list(pm.heads) if heads is None else list(heads)
    layers = sorted({pm.heads[h].config.layer for h in heads} | ({-1} if not heads else set()))
    feats = pm.features(prompts, comps, layers=layers, logprobs=logprobs)
    flat_rewards = {h: pm(feats.states, h).tolist() for h in heads}
    out = ChoiceScores(examples)
    i = 0
    for ex in examples:
        k = len(ex.choices)
        if logprobs:
            s = feats.logprob_sum[i: i + k]
            out.logprob_sum.append(s.tolist())
            out.logprob.append((s / feats.n_tokens[i: i + k].clamp_min(1)).tolist())
        for h in heads:
            out.rewards.setdefault(h, []).append(flat_rewards[h][i: i + k])
        i += k
    return out


def summarize(scores: ChoiceScores) -> dict[str, Any]:
    """Accuracy, predicted-choice distribution and tie count of every method."""
    labels = [ex.label for ex in scores.examples]
    n_choices = max(len(ex.choices) for ex in scores.examples)
    out: dict[str, Any] = {"n": len(labels)}
    for name, table in scores.methods().items():
        if not table:
            continue
        preds, ties = choose(table)
        out[name] = {"accuracy": accuracy(preds, labels), "ties": ties,
                     "predicted": prediction_distribution(preds, n_choices)["counts"],
                     "majority_fraction": prediction_distribution(preds, n_choices)["majority_fraction"]}
    out["gold"] = prediction_distribution(labels, n_choices)["counts"]
    return out
