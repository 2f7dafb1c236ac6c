"""lm-evaluation-harness-style log-likelihood scoring on prefheads' exact engine.

Follows **lm-evaluation-harness v0.4.13** (``lm_eval==0.4.13``), zero-shot, model ``hf``
(``HFLM``) with its defaults, no chat template:

* Encoding (``TemplateLM._encode_pair``): trailing whitespace of the context moves onto the
  continuation; ``context + continuation`` is encoded jointly and split where the context's own
  encoding ends: ``context_ids = enc(context)``, ``continuation_ids = enc(whole)[len(context_ids):]``.
  The model reads ``context_ids + continuation_ids``; where the joint encoding's head differs from
  ``enc(context)`` (a token merging across the boundary) the harness still does exactly that, and
  so does this module (counted in ``boundary_mismatches``). An empty context is the prefix token
  (BOS, else EOS) alone.
* Special tokens (``HFLM.tok_encode``): ``add_bos_token=None`` (the default) means the tokenizer's
  own default for ``add_special_tokens=True`` (SmolLM2's adds no BOS); ``True`` / ``False``
  force it (``True`` puts BOS first where the tokenizer does not); a context that already starts
  with the prefix token's text gets no special tokens.
* Scores (``ConfigurableTask.process_results``): ``acc`` = argmax of the summed continuation
  log-prob; ``acc_norm`` = argmax of that sum divided by ``len(choice)`` in **characters** of the
  ``doc_to_choice`` string (no delimiter; for WinoGrande's partial scoring the choices are the
  contexts); ties go to the first candidate (``np.argmax``). ``mean`` (the paper's log-prob
  rule) divides by the number of continuation tokens instead.
* Sequences longer than the model's context keep their last ``max_length`` tokens.

Typical use::

    exs = tasks.load_examples("arc_easy", data_dir=..., variant="lm-eval")
    scores = score_lmeval(pm, exs)          # PreferenceModel, or any HF causal LM + tokenizer=
    scores.summary()                         # {"n": ..., "acc": ..., "acc_norm": ..., "mean": ...}
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prefheads.chat import Encoded
from prefheads.engine import extract
from prefheads.families import profile_for, unwrap
from prefheads.hooks import FINAL
from prefheads.eval.metrics import choose
from prefheads.rawtext import encode_pair, prefix_token_id, tok_encode  # noqa: F401  (re-exported)
from prefheads.tasks.harness import HARNESS_VERSION
from prefheads.types import Example

METHODS = ("acc", "acc_norm", "mean")
_DEFAULT_MAX_LENGTH = 2048  # HFLM's fallback when neither config nor tokenizer says
_CPU_MAX_TOKENS = 512  # CPUs run the shared-prefix engine faster per token in small chunks


def _on_cpu(model: nn.Module) -> bool:
    return next(unwrap(model).parameters()).device.type == "cpu"


def resolve_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The context length HFLM uses: the config's, else the tokenizer's, else 2048."""
    cfg = unwrap(model).config
    for c in (getattr(cfg, "text_config", None), cfg):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if c is not None and isinstance(getattr(c, attr, None), int):
                return int(getattr(c, attr))
    tml = getattr(tokenizer, "model_max_length", None)
    return int(tml) if isinstance(tml, int) and tml < 1_000_000_000 else _DEFAULT_MAX_LENGTH


def _requests(ex: Example) -> dict[str, Any]:
    req = (ex.meta or {}).get("lmeval")
    if not req:
        raise ValueError(f"example {ex.id!r} ({ex.task}) has no harness requests in meta['lmeval']; "
                         "load it with variant='lm-eval'")
    if not len(req["contexts"]) == len(req["continuations"]) == len(ex.choices):
        raise ValueError(f"example {ex.id!r}: meta['lmeval'] does not match its {len(ex.choices)} choices")
    return req


def encode_examples(tokenizer: Any, examples: Sequence[Example], *, add_bos: bool | None = None,
                    prefix_id: int | None = None, max_length: int | None = None) -> tuple[list[Encoded], int]:
    """One :class:`Encoded` per candidate (``ids = context + continuation``, ``prompt_len =
    len(context ids)``), in example order, and the number of boundary mismatches."""
    pid = prefix_token_id(tokenizer, prefix_id)
    items, mismatches = [], 0
    for ex in examples:
        req = _requests(ex)
        for ctx_s, cont_s in zip(req["contexts"], req["continuations"]):
            ctx, cont, bad = encode_pair(tokenizer, ctx_s, cont_s, add_bos=add_bos, prefix_id=pid)
            mismatches += bad
            ids, plen = ctx + cont, len(ctx)
            if max_length is not None and len(ids) > max_length:
                cut = len(ids) - max_length
                if cut >= plen:
                    raise ValueError(f"example {ex.id!r}: the continuation alone exceeds max_length={max_length}")
                ids, plen = ids[cut:], plen - cut
            items.append(Encoded(ids, plen, max(0, len(ctx) + len(cont) - len(ids))))
    return items, mismatches


@dataclass
class LmEvalScores:
    """Harness-style candidate scores of one task.

    Attributes:
        examples: The scored examples (``lm-eval`` variant).
        logprob_sum: Summed continuation log-prob per candidate, per example.
        n_tokens: Continuation tokens per candidate.
        norm_chars: ``acc_norm``'s divisor per candidate (characters of ``doc_to_choice``).
        boundary_mismatches: Candidates whose joint encoding did not start with the context's.
        truncated: Candidates that lost tokens from the left to fit the context length.
        seconds: Wall time of encoding + scoring.
    """

    examples: list[Example]
    logprob_sum: list[list[float]] = field(default_factory=list)
    n_tokens: list[list[int]] = field(default_factory=list)
    norm_chars: list[list[int]] = field(default_factory=list)
    boundary_mismatches: int = 0
    truncated: int = 0
    seconds: float = 0.0

    def methods(self, prefix: str = "") -> dict[str, list[list[float]]]:
        """Score tables by method (``acc``, ``acc_norm``, ``mean``), ``prefix`` prepended to
        each name; the first-maximum argmax of a row is that method's prediction."""
        def ratio(den: list[list[int]]) -> list[list[float]]:
            return [[s / max(d, 1) for s, d in zip(row, drow)] for row, drow in zip(self.logprob_sum, den)]

        return {f"{prefix}acc": [list(r) for r in self.logprob_sum],
                f"{prefix}acc_norm": ratio(self.norm_chars), f"{prefix}mean": ratio(self.n_tokens)}

    def predictions(self) -> dict[str, list[int]]:
        """Predicted candidate per example, by method (ties: the first, as ``np.argmax``)."""
        return {m: choose(t)[0] for m, t in self.methods().items()}

    def correct(self) -> dict[str, list[bool | None]]:
        """Per-example correctness by method (``None`` for an unlabelled example)."""
        labels = [ex.label for ex in self.examples]
        return {m: [None if y is None else p == y for p, y in zip(preds, labels)]
                for m, preds in self.predictions().items()}

    def summary(self) -> dict[str, Any]:
        """Accuracy of every method over the labelled examples: ``{"n", "acc", "acc_norm",
        "mean", "unlabelled", "boundary_mismatches", "truncated", "harness"}``."""
        n = sum(ex.label is not None for ex in self.examples)
        out: dict[str, Any] = {"n": n}
        out.update({m: (sum(bool(x) for x in c) / n if n else float("nan")) for m, c in self.correct().items()})
        out.update(unlabelled=len(self.examples) - n, boundary_mismatches=self.boundary_mismatches,
                   truncated=self.truncated, harness=f"lm_eval=={HARNESS_VERSION}")
        return out

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per example: id, label, raw scores, predictions."""
        preds = self.predictions()
        return [{"id": ex.id, "task": ex.task, "label": ex.label, "logprob_sum": self.logprob_sum[j],
                 "n_tokens": self.n_tokens[j], "norm_chars": self.norm_chars[j],
                 "pred": {m: p[j] for m, p in preds.items()}} for j, ex in enumerate(self.examples)]


def score_lmeval(model: Any, examples: Sequence[Example], *, tokenizer: Any = None,
                 add_bos: bool | None = None, prefix_id: int | None = None, max_length: int | None = None,
                 max_tokens: int | None = None, max_batch: int = 64, shared_prefix: bool = True) -> LmEvalScores:
    """Score ``lm-eval``-variant examples as lm-evaluation-harness 0.4.13 does (module docstring).

    Args:
        model: A :class:`~prefheads.model.PreferenceModel` (heads unused) or a Hugging Face
            causal LM (then ``tokenizer`` is required).
        examples: Examples from ``load_examples(..., variant="lm-eval")``.
        tokenizer: The tokenizer (default: the PreferenceModel's).
        add_bos: HFLM's ``add_bos_token`` (``None``: the tokenizer's default, as HFLM).
        prefix_id: HFLM's ``prefix_token_id`` (default: BOS, else EOS).
        max_length: Context length (default: as HFLM resolves it).
        max_tokens: Padded-token budget per forward (default: 512 on CPU, where small chunks run
            faster per token (measured on SmolLM2-135M, 2 cores), else the model's or 4096).
        max_batch: Most sequences per forward.
        shared_prefix: Encode each distinct context once (exact; the default).

    Returns:
        :class:`LmEvalScores`.
    """
    t0 = time.perf_counter()
    examples = list(examples)
    if hasattr(model, "backbone") and hasattr(model, "profile"):  # a PreferenceModel
        backbone, profile = model.backbone, model.profile
        tokenizer = tokenizer or model.tokenizer
        max_tokens = max_tokens or (None if _on_cpu(backbone) else getattr(model, "max_tokens", None))
    else:
        backbone, profile = model, profile_for(model)
    if tokenizer is None:
        raise ValueError("score_lmeval needs tokenizer= with a plain causal LM")
    if max_length is None:
        max_length = resolve_max_length(backbone, tokenizer)
    items, mismatches = encode_examples(tokenizer, examples, add_bos=add_bos, prefix_id=prefix_id,
                                        max_length=max_length)
    out = LmEvalScores(examples, boundary_mismatches=mismatches, truncated=sum(it.truncated > 0 for it in items))
    if items:
        budget = max_tokens or (_CPU_MAX_TOKENS if _on_cpu(backbone) else 4096)
        # the harness scores the language model itself: a PreferenceModel's adapters are off
        with model.reading(None) if backbone is not model else contextlib.nullcontext():
            feats = extract(backbone, profile, items, [FINAL], pad_id=tokenizer.pad_token_id or 0, logprobs=True,
                            shared_prefix=shared_prefix, max_tokens=budget, max_batch=max_batch)
        sums, nts = feats.logprob_sum.tolist(), feats.n_tokens.tolist()  # type: ignore[union-attr]
        i = 0
        for ex in examples:
            k = len(ex.choices)
            out.logprob_sum.append(sums[i: i + k])
            out.n_tokens.append([int(x) for x in nts[i: i + k]])
            out.norm_chars.append([len(c) for c in _requests(ex)["doc_choices"]])
            i += k
    out.seconds = time.perf_counter() - t0
    return out


def summarize_lmeval(scores: LmEvalScores) -> dict[str, Any]:
    """Shorthand for :meth:`LmEvalScores.summary`."""
    return scores.summary()
