"""Scoring labelled examples both ways from one backbone pass per backbone state.

* log-prob: the candidate with the highest *mean* log-probability of its assistant tokens
  (the end-of-turn token included, as in the reference code), ``logprob_sum / n_tokens``;
* DPH: the candidate with the highest reward at its end-of-turn token, for every head.

Ties are broken toward the lowest candidate index (:func:`prefheads.eval.metrics.choose`) and
their count is reported for every method; preference pairs count a tie as a miss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from prefheads.eval.metrics import accuracy, choose, prediction_distribution
from prefheads.types import Example

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

LOGPROB = "logprob"
"""Method name of mean log-prob scoring; heads are ``dph:<head>``."""


def method_name(head: str) -> str:
    """Method name of a head's reward (``dph:<head>``)."""
    return f"dph:{head}"


@dataclass
class ChoiceScores:
    """Per-example candidate scores of one task.

    Attributes:
        examples: The scored examples.
        logprob: Mean log-prob per candidate, per example.
        logprob_sum: Summed log-prob per candidate, per example.
        rewards: head name -> reward per candidate, per example.
        extra: Further baselines by method name (e.g. ``lm-eval:acc``), same layout.
    """

    examples: list[Example]
    logprob: list[list[float]] = field(default_factory=list)
    logprob_sum: list[list[float]] = field(default_factory=list)
    rewards: dict[str, list[list[float]]] = field(default_factory=dict)
    extra: dict[str, list[list[float]]] = field(default_factory=dict)

    def methods(self) -> dict[str, list[list[float]]]:
        """Score tables by method name (``logprob``, extra baselines, ``dph:<head>``)."""
        out = {LOGPROB: self.logprob}
        out.update(self.extra)
        out.update({method_name(h): r for h, r in self.rewards.items()})
        return out


@contextlib.contextmanager
def _eval_mode(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    # Heads are nn.Modules, in training mode after construction or loading: dropout on the
    # pooler output would make eval scores random. Restore the caller's mode afterwards.
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


def score_examples(pm: PreferenceModel, examples: Sequence[Example], heads: Sequence[str] | None = None,
                   logprobs: bool = True, *, chunk_size: int = 256,
                   on_chunk: Callable[[int], None] | None = None, **feature_kw: Any) -> ChoiceScores:
    """Score every candidate of every example, all heads and log-prob from one pass per backbone state.

    Heads reading the same state (the base model, or one LoRA adapter) share a pass; log-prob
    is the base model's (a pass with adapters off, shared with the frozen heads).

    Args:
        pm: The model.
        examples: Examples to score (every choice is a candidate).
        heads: Heads to apply (default: all attached).
        logprobs: Also compute mean / summed completion log-probs.
        chunk_size: Examples per :meth:`features` call (bounds memory; results do not depend on it).
        on_chunk: Called with the number of examples after each chunk (progress bars).
        **feature_kw: Passed to :meth:`features` (``shared_prefix``, ``padding_side``).

    Returns:
        fp32 scores as :class:`ChoiceScores`; heads run in eval mode (no dropout).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to score")
    heads = list(pm.heads) if heads is None else list(heads)
    if not heads and not logprobs:
        raise ValueError("nothing to compute: no heads and logprobs=False")
    # one pass per group of heads reading the same backbone state, reading every hidden state
    # the group's heads need; the log-prob columns are the base model's own (adapters off)
    groups = pm.head_groups(heads)
    if logprobs and all(adapter is not None for adapter, _ in groups):
        groups.insert(0, (None, []))
    out = ChoiceScores(examples, rewards={h: [] for h in heads})
    with torch.no_grad(), _eval_mode([pm.heads[h] for h in heads]):
        for start in range(0, len(examples), chunk_size):
            part = examples[start: start + chunk_size]
            prompts = [ex.prompt for ex in part for _ in ex.choices]
            comps = [c for ex in part for c in ex.choices]
            flat = {}
            for adapter, names in groups:
                with pm.reading(adapter):
                    feats = pm.features(prompts, comps, layers=pm.layers_for(names) or [-1],
                                        logprobs=(logprobs and adapter is None) or pm.needs_logprobs(names),
                                        raw=bool(names) and pm.needs_raw_view(names),
                                        **feature_kw)
                if adapter is None:
                    base = feats
                flat.update({h: pm(feats.states, h, pm.lm_scores(feats, comps, h)).float().cpu() for h in names})
            i = 0
            for ex in part:
                k = len(ex.choices)
                if logprobs:
                    s = base.logprob_sum[i: i + k].double()
                    out.logprob_sum.append(s.tolist())
                    out.logprob.append((s / base.n_tokens[i: i + k].clamp_min(1)).tolist())
                for h in heads:
                    out.rewards[h].append(flat[h][i: i + k].tolist())
                i += k
            if on_chunk is not None:
                on_chunk(len(part))
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
        dist = prediction_distribution(preds, n_choices)
        out[name] = {"accuracy": accuracy(preds, labels), "ties": ties,
                     "predicted": dist["counts"], "majority_fraction": dist["majority_fraction"]}
    out["gold"] = prediction_distribution(labels, n_choices)["counts"]
    return out
