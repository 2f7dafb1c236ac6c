"""Train many frozen heads at once: the candidate heads of ``--layer auto`` as one stacked module.

Each :class:`Candidate` (a head, the cached features it reads, its LM score) is trained as
:func:`prefheads.training.loop.train` trains it alone on a frozen backbone: the same input and
score standardisers, the same batches (drawn once per epoch for all), the same loss, AdamW and
warmup-cosine schedule, its own gradient-norm clip and its own best epoch by its own validation
choice accuracy. Heads of one structure are stacked with :func:`torch.func.stack_module_state` (a
leading candidate dimension on every weight) and run through :func:`torch.func.vmap` over
:func:`torch.func.functional_call`: one forward, one loss call, one backward and one optimizer
step serve all of them. The loss is N times the loss of the N heads' batches end to end, i.e. the
sum of their losses (the DPH losses are means over a batch's rows); each head's weights reach only
its own term, so each gradient is the one its own run computes, and AdamW is elementwise, so its
step on the stack is each head's own step. Afterwards the stack is written back into the heads:
plain :class:`~prefheads.heads.RewardHead` objects, saved and loaded as ever.

What differs from separate runs is float rounding (batched vs one-head matrix products): in
``tests/test_stacked.py`` every weight lies within 5e-7 of its tensor's largest entry after
training (the tests hold it to 1e-5). Where a weight's gradient is a near-total cancellation — a SwiGLU head's output bias while
its pre-activations sit on tanh's flat middle under a shift-invariant loss — rounding alone moves
it, in separate runs too (a one-ulp nudge of the initial weights moves it as much).

When the stack cannot stand in for separate runs :func:`stack_blocker` says why and ``fit`` trains
the heads one by one: checkpoints (``--resume``, ``--save-every``), gradient accumulation, mixed
precision, logging and distributed launches run through accelerate in the one loop; dropout draws
each head's masks from the global generator; a pooler ``vmap`` cannot run; heads too large to hold
all at once (:data:`MAX_STACKED_PARAMETERS`) or, on a CPU, large enough to be arithmetic-bound
(:data:`CPU_STACKED_HEAD_WEIGHTS`: the default linear head and the BERT pooler stack; the
paper's SwiGLU head at SmolLM2's width does not). ``PREFHEADS_STACKED=0`` turns stacking off.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from prefheads.heads import RewardHead
from prefheads.losses import is_listwise
from prefheads.optim import clip_grad_norms_, warmup_cosine_schedule
from prefheads.training.config import FitConfig
from prefheads.training.loop import _epoch_lists, _epoch_pairs, _loss
from prefheads.training.data import choice_hits, padded_groups, pair_hits, sample_pairs

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

log = logging.getLogger(__name__)
Groups = Sequence[tuple[int, list[int]]]
METRICS = ("loss", "pair_accuracy", "margin")  # the per-epoch training means train() records
MAX_STACKED_PARAMETERS = 1 << 26
"""Weights of all candidate heads together above which they train one by one: a stack holds every
head with its gradient, AdamW moments and best-epoch copy (five copies: ~1.3 GB in fp32 at this
size), where separate runs hold two heads at a time."""
CPU_STACKED_HEAD_WEIGHTS = 1 << 20
"""Weights of one head above which a CPU trains the candidates one by one. Stacking removes the
per-step overhead of many small runs; a larger head is arithmetic-bound, and the passes over a
stack that no longer fits the cache make it slower. ``bench/stacked_layers.py``, 16 heads on a
shared 2-core CPU, one by one vs stacked: linear head (577 weights) 6x, BERT pooler at d = 288
(83k weights) 2.4x, at d = 576 (333k) 0.7x-1.2x, SwiGLU at d = 576 (2.7M) 0.7x-0.8x."""


@dataclass
class Candidate:
    """One head to train and what it reads.

    Attributes:
        head: The head (freshly initialised; trained in place).
        features: ``[M, d]`` its input for every candidate row (one layer's cached states).
        scores: ``[M]`` its LM score of every row when the head adds one, else None.
    """

    head: RewardHead
    features: Tensor
    scores: Tensor | None = None


class HeadStack:
    """N heads of one structure as one set of weights with a leading candidate dimension.

    Args:
        heads: Heads with the same parameter and buffer names and shapes (standardisers set).
    """

    def __init__(self, heads: Sequence[RewardHead]) -> None:
        self.params, self.buffers = stack_module_state(list(heads))
        self.base = copy.deepcopy(heads[0]).to("meta")  # the code that runs; its weights come per call
        self.uses_scores = heads[0].uses_scores

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], h: Tensor, s: Tensor | None) -> Tensor:
            return functional_call(self.base, (params, buffers), (h, s))

        # dropout is 0 whenever heads are stacked; "different" only lets the fused p=0 kernel run
        self._call = vmap(one, in_dims=(0, 0, 0, 0 if self.uses_scores else None), randomness="different")

    def __len__(self) -> int:
        return len(next(iter(self.buffers.values())))

    def __call__(self, h: Tensor, scores: Tensor | None = None) -> Tensor:
        """``[N, R, d]`` features (``[N, R]`` scores) ``-> [N, R]`` rewards, head i on slice i."""
        return self._call(self.params, self.buffers, h, scores)

    def train(self, mode: bool = True) -> None:
        """Set train / eval mode of the code that runs (as ``nn.Module.train``)."""
        self.base.train(mode)

    def grads(self) -> list[Tensor]:
        """The stacked gradients ``[N, ...]`` of the weights that have one."""
        return [p.grad for p in self.params.values() if p.grad is not None]

    def snapshot(self) -> dict[str, Tensor]:
        """A detached copy of the stacked weights."""
        return {k: v.detach().clone() for k, v in self.params.items()}

    @torch.no_grad()
    def keep(self, best: dict[str, Tensor], which: Tensor) -> None:
        """Copy the weights of the heads marked in ``which`` (``[N]`` bool) into ``best``."""
        which = which.to(best[next(iter(best))].device)
        for k, v in self.params.items():
            best[k][which] = v[which]

    @torch.no_grad()
    def unstack(self, heads: Sequence[RewardHead], weights: dict[str, Tensor] | None = None) -> None:
        """Write slice i of ``weights`` (default: the current ones) into ``heads[i]``."""
        weights = self.params if weights is None else weights
        for i, head in enumerate(heads):
            for name, p in head.named_parameters():
                p.copy_(weights[name][i])


def stack_blocker(cfg: FitConfig, heads: Sequence[RewardHead] = ()) -> str | None:
    """Why stacked training cannot stand in for one ``train`` per head (None: it can).

    Args:
        cfg: The run's options.
        heads: The heads to stack; each structure is tried once under ``vmap``.
    """
    if os.environ.get("PREFHEADS_STACKED", "1") == "0":
        return "PREFHEADS_STACKED=0"
    if cfg.resume or cfg.save_every:
        return "checkpoints (--resume, --save-every) are written per head by the one training loop"
    if cfg.grad_accum > 1 or cfg.mixed_precision != "no" or cfg.log_with:
        return "gradient accumulation, mixed precision and --log-with run through accelerate"
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return "a distributed launch splits batches across processes"
    if cfg.dpo_weight or cfg.init_head:
        return "cDPO and --init-head are one-head runs"
    if cfg.head_dropout > 0 or any(h.config.dropout > 0 for h in heads):
        return "dropout draws each head's masks from the global generator"
    for group in _by_structure(heads).values():
        probe = [heads[i] for i in group[:2]]
        mean = probe[0].input_mean
        h = torch.zeros(len(probe), 2, *mean.shape, device=mean.device)
        try:
            HeadStack(probe)(h, h.new_zeros(len(probe), 2) if probe[0].uses_scores else None)
        except Exception as e:  # noqa: BLE001 - any pooler may be registered; vmap is the test
            return f"the {probe[0].config.pooler} pooler does not run under torch.func.vmap ({type(e).__name__}: {e})"
    return None


def size_blocker(head: RewardHead, count: int) -> str | None:
    """Why ``count`` heads like ``head`` train better one by one than stacked (None: stack them)."""
    n = head.num_parameters()
    if n * count > MAX_STACKED_PARAMETERS:
        return f"{count} heads of {n:,} weights are more than {MAX_STACKED_PARAMETERS:,} to hold at once"
    if head.input_mean.device.type == "cpu" and n > CPU_STACKED_HEAD_WEIGHTS:
        return f"a head of {n:,} weights is arithmetic-bound on a CPU, where a stack of them runs slower"
    return None


def _by_structure(heads: Sequence[RewardHead]) -> dict[tuple, list[int]]:
    """Indices of the heads grouped by structure (names, shapes and dtypes of weights and buffers)."""
    out: dict[tuple, list[int]] = {}
    for i, h in enumerate(heads):
        key = (type(h.pooler).__name__, h.uses_scores,
               tuple((n, tuple(t.shape), t.dtype) for n, t in [*h.named_parameters(), *h.named_buffers()]))
        out.setdefault(key, []).append(i)
    return out


def train_stacked(candidates: Sequence[Candidate], train_groups: Groups, val_groups: Groups, cfg: FitConfig,
                  outs: Sequence[Path] | None = None) -> list[tuple[list[dict[str, float]], int]]:
    """Train every candidate's head at once; each ends with its best-validation weights.

    Args:
        candidates: The heads and their inputs (every ``features`` has the same rows ``M``).
        train_groups: ``(preferred_row, [other_rows])`` training groups.
        val_groups: Validation groups (best epoch by choice accuracy; the last epoch without).
        cfg: The run's options (as for :func:`~prefheads.training.loop.train`; see
            :func:`stack_blocker` for the ones it does not take).
        outs: One folder per candidate for its ``history.json`` (as ``train`` writes it), or None.

    Returns:
        ``(history, best_epoch)`` per candidate, in order, as ``train`` returns them.
    """
    heads = [c.head for c in candidates]
    dev = heads[0].input_mean.device
    _fit_standardizers(candidates, sorted({r for w, ls in train_groups for r in [w, *ls]}))
    parts = list(_by_structure(heads).values())
    stacks = [HeadStack([heads[i] for i in part]) for part in parts]
    feats = [[candidates[i].features for i in part] for part in parts]
    scores = [torch.stack([candidates[i].scores for i in part]).to(dev) if s.uses_scores else None
              for part, s in zip(parts, stacks)]
    opt = torch.optim.AdamW([p for s in stacks for p in s.params.values()], lr=cfg.head_lr or cfg.lr,
                            betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(train_groups) / cfg.batch_size)
    total = max(1, cfg.epochs * batches_per_epoch)
    sched = warmup_cosine_schedule(opt, int(cfg.warmup_ratio * total), total, cfg.final_lr_ratio)
    listwise = is_listwise(cfg.objective)
    val_lists = padded_groups(val_groups) if val_groups else None
    val_pairs = sample_pairs(val_groups, torch.Generator().manual_seed(cfg.seed + 1)) if val_groups else None
    histories: list[list[dict[str, float]]] = [[] for _ in candidates]
    best_score = [torch.full((len(s),), -1.0, dtype=torch.float64) for s in stacks]
    best_epoch = [0] * len(candidates)
    best = [s.snapshot() for s in stacks]
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        for s in stacks:
            s.train()
        order = (_epoch_lists if listwise else _epoch_pairs)(train_groups, cfg.seed, epoch)
        seen: list[list[Tensor]] = [[] for _ in stacks]  # each step's rewards [N, B, width], before it
        for b in range(batches_per_epoch):
            batch = order[b * cfg.batch_size: (b + 1) * cfg.batch_size]
            idx = torch.where(batch >= 0, batch, batch[:, :1]).reshape(-1)
            loss, read = 0.0, {}
            for k, (s, f, sc) in enumerate(zip(stacks, feats, scores)):
                r = s(_gather(f, idx, dev, read), None if sc is None else sc[:, idx.to(dev)])
                r = r.float().view(len(s), len(batch), batch.shape[1])
                seen[k].append(r.detach())
                # the DPH losses are means over a batch's rows: N heads' batches end to end give
                # the mean of their N losses, so N times it is their sum (one call for N heads)
                loss = loss + len(s) * _batch_loss(cfg, r, batch, listwise)[0]
            loss.backward()
            for s in stacks:
                clip_grad_norms_(s.grads(), cfg.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        secs = time.perf_counter() - t0
        evals = _validate(stacks, feats, scores, val_lists, val_pairs, dev) if val_groups else None
        for k, (part, s) in enumerate(zip(parts, stacks)):
            if evals is None:
                acc = pair = [float("nan")] * len(s)
                score = torch.full((len(s),), float(epoch), dtype=torch.float64)
            else:
                acc = [int(h) / len(val_groups) for h in evals[k][0]]
                pair = [float(p) for p in evals[k][1]]
                score = torch.tensor([a + 1e-3 * p for a, p in zip(acc, pair)], dtype=torch.float64)
            better = score > best_score[k]
            best_score[k] = torch.where(better, score, best_score[k])
            s.keep(best[k], better)
            train_metrics = _epoch_metrics(cfg, torch.cat(seen[k], dim=1), order, listwise)
            for j, i in enumerate(part):
                histories[i].append({"epoch": epoch, **train_metrics[j], "seconds": secs,
                                     "val_pair_accuracy": pair[j], "val_accuracy": acc[j]})
                best_epoch[i] = epoch if better[j] else best_epoch[i]
    for part, s, w in zip(parts, stacks, best):
        s.unstack([heads[i] for i in part], w)
    for i, head in enumerate(heads):
        head.eval()
        if outs is not None:
            Path(outs[i]).mkdir(parents=True, exist_ok=True)
            (Path(outs[i]) / "history.json").write_text(json.dumps(histories[i], indent=2))
    return [(h, e) for h, e in zip(histories, best_epoch)]


@torch.no_grad()
def _fit_standardizers(candidates: Sequence[Candidate], rows: list[int]) -> None:
    """Fit every head's input (and score) standardiser on the training rows, as ``train`` does."""
    fitted: dict[int, RewardHead] = {}
    for c in candidates:
        first = fitted.setdefault(id(c.features), c.head)
        if first is c.head:
            c.head.fit_standardizer(c.features[rows])
        else:  # the same features: the same statistics, computed once
            c.head.input_mean.copy_(first.input_mean)
            c.head.input_std.copy_(first.input_std)
        if c.head.uses_scores:
            c.head.fit_score_standardizer(c.scores[rows])


def _gather(tensors: list[Tensor], idx: Tensor, dev: torch.device, read: dict[Any, Tensor]) -> Tensor:
    """``[N, R, d]`` rows ``idx`` of each tensor. ``read`` keeps what this batch read: a layer read
    by several heads (with and without the score) is indexed once, the same layers stacked once."""
    key = tuple(map(id, tensors))
    if key not in read:
        for t in tensors:
            if id(t) not in read:
                read[id(t)] = t[idx].to(dev)
        read[key] = torch.stack([read[id(t)] for t in tensors])
    return read[key]


def _batch_loss(cfg: FitConfig, r: Tensor, batch: Tensor, listwise: bool) -> tuple[Tensor, dict[str, float]]:
    """The configured loss of ``[N, B, width]`` rewards of batch ``[B, width]``, N heads end to end."""
    n = r.shape[0]
    mask = (batch >= 0).repeat(n, 1) if listwise else None
    return _loss(cfg, r.reshape(-1, r.shape[-1]), None, None, mask)


@torch.no_grad()
def _epoch_metrics(cfg: FitConfig, r: Tensor, order: Tensor, listwise: bool) -> list[dict[str, float]]:
    """Per head, the epoch's training metrics from ``[N, rows, width]`` rewards as each step saw them.

    ``train`` records the batch-size-weighted mean of each batch's metric; for the losses' row means
    that is the metric of the epoch's rows at once.
    """
    out = []
    for rj in r:
        _, m = _batch_loss(cfg, rj[None], order[: rj.shape[0]], listwise)
        out.append({k: float(m.get(k, m.get(f"dph/{k}", 0.0))) for k in METRICS})
    return out


@torch.no_grad()
def _validate(stacks: list[HeadStack], feats: list[list[Tensor]], scores: list[Tensor | None], lists: Tensor,
              pairs: Tensor, dev: torch.device, chunk: int = 1024) -> list[tuple[Tensor, Tensor]]:
    """Per stack: ``([N] choice hits, [N] pair accuracy)`` on the validation rows, in eval mode."""
    vrows = torch.unique(lists[lists >= 0])
    pos = torch.full((int(vrows.max()) + 1,), -1, dtype=torch.long)
    pos[vrows] = torch.arange(len(vrows))
    local = torch.where(lists >= 0, pos[lists.clamp_min(0)], -1)
    out = []
    for s, f, sc in zip(stacks, feats, scores):
        s.train(False)
        chunks = [vrows[i: i + chunk] for i in range(0, len(vrows), chunk)]
        r = torch.cat([s(_gather(f, rows, dev, {}), None if sc is None else sc[:, rows.to(dev)]) for rows in chunks],
                      dim=1).cpu()
        out.append((choice_hits(r, local), pair_hits(r, pos[pairs])))
        s.train(True)
    return out


def train_layer_heads(pm: PreferenceModel, cfg: FitConfig, runs: Sequence[tuple[str, int, str | None]],
                      states: dict[int, Tensor], values: Tensor | None, train_groups: Groups, val_groups: Groups,
                      out: Path) -> dict[str, tuple[list[dict[str, float]], int]]:
    """``--layer auto``: add every candidate head to ``pm`` and train them all at once.

    Each head is created as ``fit`` creates it before its own run (``torch.manual_seed(cfg.seed)``
    first), so each trains from the same start as alone.

    Args:
        pm: The :class:`~prefheads.model.PreferenceModel` the heads are added to (inactive).
        cfg: The run's options.
        runs: ``(head name, layer, LM score or None)`` per candidate.
        states: ``{layer: [M, d]}`` cached features.
        values: ``[M]`` the LM score of every row (for the runs that add it), or None.
        train_groups: Training groups.
        val_groups: Validation groups.
        out: The run's folder (each head's ``history.json`` goes to ``out/layers/<layer>[+score]``).

    Returns:
        ``{head name: (history, best_epoch)}``; empty (no head added, the reason logged) where
        stacking does not stand in for separate runs.
    """
    why, added = stack_blocker(cfg), []
    for tmp, layer, variant in runs if why is None else []:
        torch.manual_seed(cfg.seed)  # every candidate head starts from the same draw
        added.append(pm.add_head(tmp, cfg.pooler, layer=layer, dropout=cfg.head_dropout, activate=False,
                                 score_input=variant))
        why = size_blocker(added[0], len(runs))  # before the other heads take their memory
        if why is not None:
            break
    why = why or stack_blocker(cfg, added)
    if why is not None:
        for tmp, _, _ in runs[: len(added)]:
            pm.remove_head(tmp)
        log.info("--layer auto: training the %d candidate heads one by one (%s)", len(runs), why)
        return {}
    log.info("--layer auto: training the %d candidate heads at once", len(runs))
    cands = [Candidate(pm.heads[t], states[layer], values if variant else None) for t, layer, variant in runs]
    outs = [out / "layers" / t.rpartition("@")[2] for t, _, _ in runs]  # where train() writes each history
    done = train_stacked(cands, train_groups, val_groups, cfg, outs)
    return {t: r for (t, _, _), r in zip(runs, done)}
