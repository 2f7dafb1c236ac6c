"""The backbone passes a fit makes: encoding every candidate, the frozen backbone's features
(through the feature cache), the raw view's log-probs, and the LM score of each candidate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from prefheads.hooks import FINAL
from prefheads.training.config import FitConfig
from prefheads.training.data import Candidates

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


def encode_candidates(pm: PreferenceModel, cands: Candidates, truncation: str) -> tuple[list[Any], int]:
    """Tokenize every candidate once, before anything is written: ``(items, n_truncated)``.

    A candidate that cannot be scored (empty reply, a prompt that does not end with a user turn,
    no reward token, too long under ``truncation="error"``) is a :class:`DataError` naming its
    example id (the dataset's id, or file name and line).
    """
    from prefheads.chat import encode
    from prefheads.tasks import DataError

    items, name = [], _namer(cands)
    for i, (p, c) in enumerate(zip(cands.prompts, cands.completions)):
        try:
            items.append(encode(pm.tokenizer, pm.chat, p, c, max_length=pm.max_length, name=name(i),
                                truncation=truncation))
        except (ValueError, TypeError) as e:
            raise DataError(str(e), file=cands.source or None) from None
    return items, sum(it.truncated > 0 for it in items)


def _namer(cands: Candidates) -> Any:
    """``name(i)``: candidate ``i`` as error messages name it (its example's id and its place there)."""
    owner = {r: g for g, (w, ls) in enumerate(cands.groups) for r in [w, *ls]}

    def name(i: int) -> str:
        g = owner.get(i)
        return f"{cands.ids[g]} candidate {[cands.groups[g][0], *cands.groups[g][1]].index(i)}" if g is not None else f"row {i}"

    return name


def frozen_features(cfg: FitConfig, pm: PreferenceModel, cands: Candidates, items: list[Any], layers: Sequence[int],
                     logprobs: bool) -> tuple[Any, bool]:
    """The frozen backbone's features of every candidate, through the feature cache."""
    from prefheads.training.cache import FeatureCache, cached_features

    cache = FeatureCache(cfg.cache_dir, cfg.cache_dtype) if cfg.feature_cache else None
    with pm.reading(None):  # a frozen head reads the base model, whatever adapters are loaded
        return cached_features(pm, cands.prompts, cands.completions, layers, cache, items=items, logprobs=logprobs)


def reads_raw_view(cfg: FitConfig) -> bool:
    """Whether this fit reads the LM's scores in the raw view too (a second, raw-view backbone pass)."""
    from prefheads.lmscores import is_raw

    wanted = cfg.lm_score
    return bool(cfg.solver == "ridge" and cfg.raw_view and wanted and wanted != "none"
                and (wanted in ("auto", "all") or is_raw(wanted)))


def raw_items(cfg: FitConfig, pm: PreferenceModel, cands: Candidates) -> list[Any]:
    """Every candidate encoded in the raw view (:mod:`prefheads.rawtext`); a bad row is a DataError."""
    from prefheads.rawtext import encode_raw

    items, name = [], _namer(cands)
    for i, (p, c) in enumerate(zip(cands.prompts, cands.completions)):
        try:
            items.append(encode_raw(pm.tokenizer, p, c, max_length=pm.max_length, name=name(i),
                                    truncation=cfg.truncation))
        except (ValueError, TypeError) as e:
            from prefheads.tasks import DataError

            raise DataError(f"raw view: {e}", file=cands.source or None) from None
    return items


def raw_features(cfg: FitConfig, pm: PreferenceModel, cands: Candidates) -> tuple[Any, bool]:
    """The base model's log-probs of every candidate in the raw view (:mod:`prefheads.rawtext`),
    through the feature cache (its own entries: the raw view's token ids differ)."""
    from prefheads.training.cache import FeatureCache, cached_features

    items = raw_items(cfg, pm, cands)
    cache = FeatureCache(cfg.cache_dir, cfg.cache_dtype) if cfg.feature_cache else None
    with pm.reading(None):
        return cached_features(pm, cands.prompts, cands.completions, [FINAL], cache, items=items, logprobs=True)


def backbone_pass(progress: bool, label: str, run: Any) -> Any:
    """``run()`` under a progress line naming the backbone pass it makes."""
    from prefheads.progress import bar

    with bar(progress) as pb:
        tid = pb.add_task(f"backbone pass ({label})", total=None)
        out = run()
        pb.update(tid, completed=1, total=1)
    return out


def score_values(feats: Any, cands: Candidates, score: str | None) -> torch.Tensor | None:
    """``[M]`` the chosen LM score of every candidate (None without one)."""
    from prefheads.lmscores import lm_score

    return None if score is None else lm_score(score, feats.logprob_sum, feats.n_tokens, cands.completions)
