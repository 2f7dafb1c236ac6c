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

Each also exists in the *raw* view (:mod:`prefheads.rawtext`), named with a ``raw:`` prefix
(``raw:logprob_sum`` is lm-evaluation-harness's ``acc`` score of an ``lm-eval``-template
question): the same completion after the prompt's plain text, no chat template, from a second,
log-prob-only pass. A head may add several scores at once (``score_input`` a list): then
``r = head(h) + Σ_k w_k · (s_k - μ_k) / σ_k`` with free weights ``w`` (fitted in closed form by
the ridge solver, :mod:`prefheads.training.probe`).
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


RAW = "raw:"
"""Prefix of a score read in the raw view."""


def score_names() -> list[str]:
    """Every score a head may add: the registered ones, then their raw-view versions."""
    return [*LM_SCORES.names(), *(RAW + n for n in LM_SCORES.names())]


def check_score(name: object) -> str:
    """``name`` if it is a known score (``logprob_sum``, ``raw:logprob_char``, ...), else a clear error."""
    if not isinstance(name, str):
        raise TypeError(f"a score input must be a score name, got {name!r}")
    if name not in score_names():
        raise KeyError(f"unknown LM score {name!r}; known: {', '.join(score_names())}")
    return name


def is_raw(name: str) -> bool:
    """Whether score ``name`` is read in the raw view (needs the second pass)."""
    return name.startswith(RAW)


def score_table(names: str | Sequence[str], feats: object, n_chars: torch.Tensor) -> torch.Tensor:
    """Scores ``names`` of each candidate from :class:`~prefheads.engine.Features`:
    ``[N]`` for one name, ``[N, S]`` for a list, float64.

    Args:
        names: One score name or a list of them (``raw:`` names need ``feats.raw_logprob_sum``).
        feats: Features from a pass with ``logprobs=True`` (and the raw pass, for raw names).
        n_chars: ``[N]`` characters of each completion.
    """
    cols = []
    for name in ([names] if isinstance(names, str) else list(names)):
        if is_raw(name):
            lp, nt = getattr(feats, "raw_logprob_sum", None), getattr(feats, "raw_n_tokens", None)
            if lp is None:
                raise ValueError(f"score {name!r} is read in the raw view: compute features with the raw pass")
            base = name[len(RAW):]
        else:
            lp, nt, base = getattr(feats, "logprob_sum"), getattr(feats, "n_tokens"), name
            if lp is None:
                raise ValueError(f"score {name!r} needs log-probs: compute features with logprobs=True")
        cols.append(LM_SCORES.get(base)(lp.double().cpu(), nt.double().cpu(), n_chars.double().cpu()))
    return cols[0] if isinstance(names, str) else torch.stack(cols, -1)


def chars_of(completions: Sequence[str]) -> torch.Tensor:
    """``[N]`` characters of each completion (float64)."""
    return torch.tensor([len(c) for c in completions], dtype=torch.float64)


def all_lm_scores(logprob_sum: torch.Tensor, n_tokens: torch.Tensor, completions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every registered score: ``{name: [N]}``."""
    return {n: lm_score(n, logprob_sum, n_tokens, completions) for n in LM_SCORES.names()}


def all_scores(feats: object, completions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every score the features allow (the raw-view ones where the raw pass ran): ``{name: [N]}``."""
    names = score_names() if getattr(feats, "raw_logprob_sum", None) is not None else LM_SCORES.names()
    chars = chars_of(completions)
    return {n: score_table(n, feats, chars) for n in names}
