"""``fit``: train a reward head. Frozen backbone: features once, then head-only epochs."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefheads.losses import get_loss
from prefheads.optim import warmup_cosine_schedule
from prefheads.training.config import FitConfig
from prefheads.training.data import Candidates, from_examples, from_pairs, sample_pairs, split

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        out: Folder the heads were saved to.
        head_name: Name of the trained head.
        history: One dict per epoch (loss, train/val pair accuracy, margin, seconds).
        best_epoch: Epoch whose head was kept (by validation pair accuracy).
        n_train / n_val: Training and validation example counts.
        feature_seconds: Time spent running the backbone.
        train_seconds: Time spent training the head.
        evaluation: Evaluation summary when an eval split was scored, else None.
    """

    out: Path
    head_name: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_val: int = 0
    feature_seconds: float = 0.0
    train_seconds: float = 0.0
    evaluation: dict[str, Any] | None = None


def training_candidates(cfg: FitConfig) -> Candidates:
    """Load the training rows of ``cfg.task`` or ``cfg.data``."""
    from prefheads import tasks

    if cfg.data is not None:
        return from_pairs(tasks.load_pair_file(cfg.data, limit=cfg.max_train, seed=cfg.seed))
    if tasks.get_task(cfg.task).kind == "preference":
        return from_pairs(tasks.load_pairs(cfg.task, split="train", data_dir=cfg.data_dir,
                                           limit=cfg.max_train, seed=cfg.seed))
    return from_examples(tasks.load_examples(cfg.task, split="train", data_dir=cfg.data_dir,
                                             limit=cfg.max_train, seed=cfg.seed))


@torch.no_grad()
def pair_accuracy(head: torch.nn.Module, feats: torch.Tensor, pairs: torch.Tensor) -> float:
    """Fraction of pairs whose preferred row out-scores the dispreferred one."""
    if pairs.numel() == 0:
        return float("nan")
    was = head.training
    head.eval()
    r = head(feats)
    head.train(was)
    return float((r[pairs[:, 0]] > r[pairs[:, 1]]).float().mean())


def train_head(
    head: torch.nn.Module,
    feats: torch.Tensor,
    train_groups: list[tuple[int, list[int]]],
    val_groups: list[tuple[int, list[int]]],
    cfg: FitConfig,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train ``head`` on cached features ``[M, d]``; keeps the best-validation epoch's weights.

    Each epoch draws a fresh dispreferred candidate per group (seeded), shuffles, and runs
    AdamW (β 0.9/0.95) with warmup + cosine decay and gradient clipping.

    Returns:
        ``(history, best_epoch)``; the head holds the best epoch's weights afterwards.
    """
    loss_fn = get_loss(cfg.objective)
    gen = torch.Generator().manual_seed(cfg.seed)
    head.fit_standardizer(feats[[r for w, ls in train_groups for r in [w, *ls]]])
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(train_groups) // cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = warmup_cosine_schedule(opt, int(cfg.warmup_ratio * total), total, cfg.final_lr_ratio)
    val_pairs = sample_pairs(val_groups, torch.Generator().manual_seed(cfg.seed + 1)) if val_groups else None
    history: list[dict[str, float]] = []
    best, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        head.train()
        pairs = sample_pairs(train_groups, gen)
        pairs = pairs[torch.randperm(len(pairs), generator=gen)]
        tot = {"loss": 0.0, "pair_accuracy": 0.0, "margin": 0.0}
        for s in range(0, len(pairs), cfg.batch_size):
            b = pairs[s: s + cfg.batch_size]
            r = head(feats[b.reshape(-1)]).view(-1, 2)
            loss, m = loss_fn(r[:, 0], r[:, 1], eps=cfg.dph_eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            sched.step()
            for k in tot:
                tot[k] += (float(loss) if k == "loss" else m[k]) * len(b)
            if on_step:
                on_step({"epoch": epoch, "loss": float(loss), "pair_accuracy": m["pair_accuracy"],
                         "margin": m["margin"], "lr": sched.get_last_lr()[0]})
        rec = {"epoch": epoch, **{k: v / len(pairs) for k, v in tot.items()}, "seconds": time.perf_counter() - t0}
        rec["val_pair_accuracy"] = pair_accuracy(head, feats, val_pairs) if val_pairs is not None else float("nan")
        history.append(rec)
        score = rec["val_pair_accuracy"] if val_pairs is not None else epoch  # no val: keep the last
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return history, best_epoch


def fit(cfg: FitConfig, pm: Any = None, progress: bool = True) -> FitResult:
    """Train a head as configured and save it to ``cfg.out``.

    Args:
        cfg: The run's options.
        pm: An already-loaded :class:`~prefheads.model.PreferenceModel` to reuse (its heads are
            kept; the new head is added). Loaded from ``cfg.base`` when None.
        progress: Show a progress bar.
    """
    from prefheads.model import PreferenceModel
    from prefheads.progress import bar

    torch.manual_seed(cfg.seed)
    if pm is None:
        pm = PreferenceModel.from_pretrained(cfg.base, revision=cfg.revision, layer=cfg.layer)
    pm.shared_prefix = cfg.shared_prefix
    name = cfg.head_name or cfg.task or "default"
    cands = training_candidates(cfg)
    tr, va = split(len(cands), cfg.val_fraction, cfg.seed)
    t0 = time.perf_counter()
    with bar(progress) as pb:
        task_id = pb.add_task(f"backbone features ({len(cands.completions)} candidates)", total=None)
        feats = pm.features(cands.prompts, cands.completions, layers=[cfg.layer]).states[cfg.layer]
        pb.update(task_id, completed=1, total=1)
    feature_s = time.perf_counter() - t0
    if name in pm.heads:
        pm.remove_head(name)
    head = pm.add_head(name, cfg.pooler, layer=cfg.layer, dropout=cfg.head_dropout)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    t1 = time.perf_counter()
    with bar(progress) as pb, open(metrics_path, "w") as mf:
        steps = cfg.epochs * max(1, -(-len(tr) // cfg.batch_size))
        tid = pb.add_task("training head", total=steps, info="")

        def on_step(m: dict[str, float]) -> None:
            mf.write(json.dumps(m) + "\n")
            pb.update(tid, advance=1, info=f"loss {m['loss']:.3f} acc {m['pair_accuracy']:.2f} margin {m['margin']:.2f}")

        history, best_epoch = train_head(head, feats, [cands.groups[g] for g in tr],
                                         [cands.groups[g] for g in va], cfg, on_step)
    train_s = time.perf_counter() - t1
    head.config.meta.update({"task": cfg.task or cfg.data, "objective": cfg.objective, "epochs": cfg.epochs,
                             "best_epoch": best_epoch, "n_train": len(tr), "n_val": len(va),
                             "val_pair_accuracy": round(history[best_epoch - 1]["val_pair_accuracy"], 4),
                             "seed": cfg.seed, "mode": cfg.mode})
    pm.save_heads(out)
    (out / "fit_config.json").write_text(cfg.to_json())
    return FitResult(out, name, history, best_epoch, len(tr), len(va), feature_s, train_s)
