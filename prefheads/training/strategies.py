"""Training modes as strategies of one loop: what trains, and how rewards are computed.

* ``frozen``: the backbone runs once (through the feature cache); only pooler + head train.
* ``lora``: peft LoRA adapters on the zoo profile's target modules train beside the head.
* ``full``: every parameter trains, decayed toward its starting value (prior regularization).

Each strategy exposes one ``nn.Module`` (:class:`Trainable`) whose ``forward(rows)`` returns the
rewards (and policy log-probs when cDPO is on) of candidate rows, so accelerate can wrap it for
distributed data parallelism like any model. A new mode is one subclass registered in
:data:`~prefheads.training.modes.MODES` (``@MODES.register("name")``): ``fit --mode name`` runs it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prefheads.training.cache import FeatureCache, cached_features
from prefheads.training.config import FitConfig
from prefheads.training.data import Candidates
from prefheads.training.modes import MODES

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

log = logging.getLogger(__name__)
__all__ = ["MODES", "FrozenTrainable", "FullTrainable", "LoraTrainable", "Trainable"]


class Trainable(nn.Module):
    """Base: holds the head (and what else trains) and the training candidates.

    Class attributes say what a mode allows (checked when a :class:`FitConfig` is built):
    ``trains_backbone`` (the backbone runs in training, so no cached features: ``--layer auto``,
    ``--lm-score`` and the ridge solver need a mode without it; such a mode is built with the
    cached ``states`` and ``scores`` as :class:`FrozenTrainable` is, so subclass that) and
    ``quantized`` (it trains on a 4/8-bit backbone).

    Attributes:
        ref_logp: ``[M]`` reference-policy summed log-probs per candidate (cDPO), or None.
        prior: A :class:`~prefheads.optim.PriorRegularizer` applied after each step, or None.
    """

    trains_backbone = True
    quantized = True

    def __init__(self, pm: PreferenceModel, head_name: str, cands: Candidates, cfg: FitConfig) -> None:
        super().__init__()
        # not a submodule: only what trains is registered (the head, and the backbone in lora/full)
        object.__setattr__(self, "pm", pm)
        self.cands, self.cfg = cands, cfg
        self.head_name = head_name
        self.head = pm.heads[head_name]
        self.reads = self.head.config.reads
        self.ref_logp: torch.Tensor | None = None
        self.prior = None
        self.items: list | None = None  # the candidates already tokenized (fit sets them)

    def setup(self) -> None:
        """Prepare before the optimizer is built (freeze, wrap, cache, reference log-probs)."""

    def save(self, out: Path) -> None:
        """Write what trained besides the head into the output folder (before its heads are saved).

        A LoRA head's adapter is saved by ``save_heads`` with the head that reads it.
        """

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Tensors that change during training (checkpointed and kept for the best epoch)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")} | {
            n: p for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`trainable_state`."""
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)[:5]}")
        self.load_state_dict(state, strict=False)

    def _backbone_forward(self, rows: torch.Tensor, logprobs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = rows.tolist()
        comps = [self.cands.completions[i] for i in idx]
        f = self.pm.features([self.cands.prompts[i] for i in idx], comps, layers=self.reads,
                             logprobs=logprobs or self.head.uses_scores, grad=torch.is_grad_enabled())
        scores = None
        if self.head.uses_scores:
            from prefheads.lmscores import lm_score

            scores = lm_score(self.head.config.score_input, f.logprob_sum, f.n_tokens, comps)
        return self.head(self.head.select(f.states), scores), f.logprob_sum

    def fit_score_standardizer(self, rows: list[int]) -> None:
        """Set the head's score standardiser from the training rows (log-prob-aware heads only)."""
        if self.head.uses_scores:
            self.head.fit_score_standardizer(self._score_values(rows))

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rewards ``[R]`` (and policy log-probs ``[R]`` or None) of candidate rows ``[R]``."""
        return self._backbone_forward(rows, self.ref_logp is not None)

    @torch.no_grad()
    def standardizer_features(self, rows: list[int], sample: int = 256) -> torch.Tensor | None:
        """Features to fit the head's input standardiser on: a seeded sample of training rows.

        Last-layer states carry a large constant offset that saturates tanh poolers; the
        standardiser removes it (frozen mode uses every training row, from the cache).
        """
        g = torch.Generator().manual_seed(self.cfg.seed)
        pick = [rows[i] for i in torch.randperm(len(rows), generator=g)[:sample].tolist()]
        f = self.pm.features([self.cands.prompts[i] for i in pick], [self.cands.completions[i] for i in pick],
                             layers=self.reads)
        return self.head.select(f.states)

    @torch.no_grad()
    def _score_values(self, rows: list[int]) -> torch.Tensor:
        from prefheads.lmscores import lm_score

        f = self.pm.features([self.cands.prompts[i] for i in rows], [self.cands.completions[i] for i in rows],
                             layers=self.reads, logprobs=True)
        return lm_score(self.head.config.score_input, f.logprob_sum, f.n_tokens,
                        [self.cands.completions[i] for i in rows])

    @torch.no_grad()
    def _reference_logprobs(self) -> torch.Tensor:
        f = self.pm.features(self.cands.prompts, self.cands.completions, layers=self.reads, logprobs=True)
        return f.logprob_sum


@MODES.register("frozen")
class FrozenTrainable(Trainable):
    """Head only, on cached backbone features.

    ``states`` (``{layer: [M, d]}``) may be given up front, e.g. when one pass feeds the heads
    of every layer (``--layer auto``); otherwise they come from the feature cache.
    """

    trains_backbone = False

    def __init__(self, *args: Any, states: dict[int, torch.Tensor] | None = None,
                 scores: torch.Tensor | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.feats = states
        self.scores = scores  # [M] the head's LM score of every candidate (log-prob-aware heads)
        self.cache_hit = states is not None

    def setup(self) -> None:
        if self.cfg.dpo_weight:
            raise ValueError("cDPO (--dpo-weight) needs a trainable policy: use --mode lora or --mode full")
        for p in self.pm.backbone.parameters():
            p.requires_grad_(False)
        if self.feats is None:
            cache = FeatureCache(self.cfg.cache_dir, self.cfg.cache_dtype) if self.cfg.feature_cache else None
            f, self.cache_hit = cached_features(self.pm, self.cands.prompts, self.cands.completions,
                                                self.reads, cache, items=self.items, logprobs=self.head.uses_scores)
            self.feats = f.states
            if self.head.uses_scores:
                from prefheads.lmscores import lm_score

                self.scores = lm_score(self.head.config.score_input, f.logprob_sum, f.n_tokens, self.cands.completions)
        if self.head.uses_scores and self.scores is None:
            raise ValueError("a log-prob-aware head needs the LM scores of its training rows")

    def _rows(self, rows: Any) -> torch.Tensor:
        return self.head.select({l: self.feats[l][rows] for l in self.reads})

    def standardizer_features(self, rows: list[int]) -> torch.Tensor:
        return self._rows(rows)

    def _score_values(self, rows: list[int]) -> torch.Tensor:
        return self.scores[rows]

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, None]:
        scores = self.scores[rows] if self.head.uses_scores else None
        return self.head(self._rows(rows), scores), None


@MODES.register("lora")
class LoraTrainable(Trainable):
    """peft LoRA adapters on the profile's target modules, trained with the head.

    On a 4/8-bit backbone this is QLoRA: peft's ``prepare_model_for_kbit_training`` first freezes
    the quantized base and casts its half-precision norms and embeddings to float32 (a no-op for a
    float32 load, as on CPU). Gradient checkpointing stays off: it trades a second forward for
    activation memory, which pays off only on backbones far larger than those validated here.
    """

    def setup(self) -> None:
        from peft import LoraConfig

        from prefheads.families import unwrap
        from prefheads.loading import quantization_of

        if quantization_of(self.pm.backbone):
            from peft import prepare_model_for_kbit_training

            prepare_model_for_kbit_training(unwrap(self.pm.backbone), use_gradient_checkpointing=False)
        targets = list(self.cfg.lora_targets or self.pm.profile.lora_targets)
        if not targets:
            raise ValueError(f"no LoRA target modules known for {self.pm.profile.model_type}; pass --lora-targets")
        conf = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                          target_modules=targets, bias="none")
        # an adapter of its own beside any the backbone carries: those, and the heads reading
        # them, stay as they are; registered here, its weights are the trainable parameters
        self.backbone = self.pm.new_adapter("default", conf, heads=[self.head_name])
        if self.cfg.dpo_weight:
            # the reference policy is the base model: adapters disabled, computed once, no copy
            with self.pm.backbone.disable_adapter():
                self.ref_logp = self._reference_logprobs()


@MODES.register("full")
class FullTrainable(Trainable):
    """Every backbone parameter trains, decayed toward its start (decoupled prior regularization)."""

    quantized = False

    def setup(self) -> None:
        from prefheads.optim import PriorRegularizer

        self.backbone = self.pm.backbone
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        if self.cfg.dpo_weight:
            self.ref_logp = self._reference_logprobs()  # before any update: the starting policy
        excl = tuple(self.cfg.prior_exclude or ())  # the CLI gives None for an unset list
        named = [(f"backbone.{n}", p) for n, p in self.backbone.named_parameters()
                 if not any(e in n for e in excl)]
        if self.cfg.prior > 0:
            self.prior = PriorRegularizer(named, coefficient=self.cfg.prior)

    def save(self, out: Path) -> None:
        """The fine-tuned backbone (and tokenizer) in ``out/backbone``, recorded by the heads saved next."""
        self.pm.backbone.save_pretrained(out / "backbone")
        self.pm.tokenizer.save_pretrained(out / "backbone")
        self.pm.fine_tuned = "backbone"
