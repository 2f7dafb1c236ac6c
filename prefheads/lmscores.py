"""The language model's own score of a candidate, as an input a reward head may add.

A head trained on a few hundred examples from one hidden state has to relearn what the LM
already knows: how likely the answer is. A *log-prob-aware* head adds one of the LM's scores,
computed in the same backbone pass as the hidden state, to its reward::

    r = head(h) + softplus(a) · (s - μ) / σ

``s`` is one registered score (chosen on the training split, by choice accuracy), ``μ, σ`` its
training mean and std (a fixed standardiser), ``softplus(a) > 0`` a learned scale. With an
uninformative hidden state the head ranks candidates exactly as the score does; a head that
adds nothing on validation is saved as the score alone (see ``prefheads.training.fit``).

Every score is computed from the completion's summed token log-probability (the end-of-turn
token included) under the chat template the head reads:

* ``logprob_sum``: the sum (lm-evaluation-harness ``acc``);
* ``logprob_mean``: per token (the paper's rule);
* ``logprob_char``: per character of the completion text (the harness's ``acc_norm``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prefheads.registry import Registry

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LM_SCORES: Registry[ScoreFn] = Registry("LM score")


@LM_SCORES.register("logprob_sum")
def _sum(logprob_sum: torch.Tensor, n_tokens: torch.Tensor, n_chars: torch.Tensor) -> torch.Tensor:
    return logprob_sum


@LM_SCORES.register("logprob_mean")
def _mean(logprob_sum: torch.Tensor, n_tokens: torch.Tensor, n_chars: torch.Tensor) -> torch.Tensor:
    return logprob_sum / n_tokens.clamp_min(1)


@LM_SCORES.register("logprob_char")
def _char(logprob_sum: torch.Tensor, n_tokens: torch.Tensor, n_chars: torch.Tensor) -> torch.Tensor:
    return logprob_sum / n_chars.clamp_min(1)


def lm_score(name: str, logprob_sum: torch.Tensor, n_tokens: torch.Tensor,
             completions: Sequence[str]) -> torch.Tensor:
    """Score ``name`` of each candidate: ``[N]`` float64.

    Args:
        name: A registered score (``logprob_sum``, ``logprob_mean``, ``logprob_char``).
        logprob_sum: ``[N]`` summed completion log-probs (:class:`~prefheads.engine.Features`).
        n_tokens: ``[N]`` completion tokens scored.
        completions: The ``N`` completion texts (for per-character scores).
    """
    chars = torch.tensor([len(c) for c in completions], dtype=torch.float64)
    return LM_SCORES.get(name)(logprob_sum.double().cpu(), n_tokens.double().cpu(), chars)


def lm_score_items(name: str, logprob_sum: torch.Tensor, n_tokens: torch.Tensor, items: Sequence) -> torch.Tensor:
    """As :func:`lm_score`, with the completions' lengths taken from encoded items (``n_chars``)."""
    chars = torch.tensor([it.n_chars for it in items], dtype=torch.float64)
    return LM_SCORES.get(name)(logprob_sum.double().cpu(), n_tokens.double().cpu(), chars)


def all_lm_scores(logprob_sum: torch.Tensor, n_tokens: torch.Tensor, completions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every registered score: ``{name: [N]}``."""
    return {n: lm_score(n, logprob_sum, n_tokens, completions) for n in LM_SCORES.names()}
