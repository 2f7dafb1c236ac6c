"""The one training loop, over any :class:`~prefheads.training.strategies.Trainable`.

Pairs are re-drawn each epoch from a generator seeded by (seed, epoch), so the data order is a
pure function of the position: a resumed run replays exactly what an uninterrupted run does.
Devices, DDP, mixed precision and gradient accumulation come from accelerate; sharded training
(``fsdp``) from torch's FSDP2 (:mod:`prefheads.training.sharding`), which accelerate drives on
GPUs only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from prefheads.losses import cdpo_loss, get_loss, is_listwise, joint_loss
from prefheads.optim import warmup_cosine_schedule
from prefheads.training.checkpoint import find_checkpoint, load_checkpoint, remove_stale, save_checkpoint
from prefheads.training.config import FitConfig
from prefheads.training.data import choice_share, padded_groups, sample_pairs
from prefheads.training.sharding import gather


def _epoch_pairs(groups: list[tuple[int, list[int]]], seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    pairs = sample_pairs(groups, g)
    return pairs[torch.randperm(len(pairs), generator=g)]


def _epoch_lists(groups: list[tuple[int, list[int]]], seed: int, epoch: int) -> torch.Tensor:
    """Every candidate of every group, preferred first, padded with -1: ``[G, K]`` (listwise)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    out = padded_groups(groups)
    return out[torch.randperm(len(out), generator=g)]


@torch.no_grad()
def choice_accuracy(trainable: Any, groups: list[tuple[int, list[int]]], chunk: int = 1024) -> float:
    """Fraction of groups whose preferred row out-scores every other candidate (ties count wrong)."""
    if not groups:
        return float("nan")
    was = trainable.training
    trainable.eval()
    rows = torch.tensor([r for w, ls in groups for r in [w, *ls]])
    r = torch.cat([trainable(rows[i: i + chunk])[0] for i in range(0, len(rows), chunk)]).tolist()
    trainable.train(was)
    return choice_share(dict(zip(rows.tolist(), r)), groups)


@torch.no_grad()
def pair_accuracy(trainable: Any, pairs: torch.Tensor, chunk: int = 256) -> float:
    """Fraction of ``[P, 2]`` row pairs whose preferred row out-scores the other (eval mode)."""
    if pairs.numel() == 0:
        return float("nan")
    was = trainable.training
    trainable.eval()
    rows = pairs.reshape(-1)
    r = torch.cat([trainable(rows[i: i + chunk])[0] for i in range(0, len(rows), chunk)]).view(-1, 2)
    trainable.train(was)
    return float((r[:, 0] > r[:, 1]).float().mean())


def _prior_group(opt: torch.optim.Optimizer, prior: Any) -> int:
    """Index of the optimizer group holding every parameter ``prior`` decays (-1 without a prior).

    The decay θ ← θ − lr·λ·(θ − θ_ref) takes the lr of the step those parameters took, not the
    head's (``--head-lr``).
    """
    if prior is None or not len(prior):
        return -1
    tracked = {id(p) for p in prior.params}
    held = [i for i, g in enumerate(opt.param_groups) if tracked & {id(p) for p in g["params"]}]
    if len(held) != 1 or not tracked <= {id(p) for p in opt.param_groups[held[0]]["params"]}:
        raise RuntimeError(f"the prior's parameters lie in optimizer groups {held}, not all in one")
    return held[0]


def _loss(cfg: FitConfig, r: torch.Tensor, lp: torch.Tensor | None, ref: torch.Tensor | None,
          mask: torch.Tensor | None = None):
    if mask is not None:  # listwise: every candidate of each question
        return get_loss(cfg.objective)(r, mask, eps=cfg.dph_eps)
    dph = get_loss(cfg.objective)(r[:, 0], r[:, 1], eps=cfg.dph_eps)
    if not cfg.dpo_weight:
        return dph
    dpo = cdpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta=cfg.beta, eps=cfg.dpo_eps)
    return joint_loss(dph, dpo, alpha_dpo=cfg.dpo_weight, alpha_dph=cfg.dph_weight)


def check_launch(num_processes: int, distributed_type: Any, env: Mapping[str, str] | None = None) -> None:
    """Refuse a launch that accelerate did not turn into the distributed run asked for.

    ``accelerate launch --use_fsdp`` / ``--use_deepspeed`` on a machine without GPUs either
    starts ``WORLD_SIZE`` processes that each train alone (accelerate falls back to no
    distribution), all writing the same output folder, or plain data parallel instead of the
    sharding asked for. Both are errors here, not silent fallbacks. Sharded training on CPU is
    ``torchrun ... fit --fsdp`` (torch FSDP2, :mod:`prefheads.training.sharding`). DeepSpeed is not
    part of what prefheads validates (see docs/distributed.md).
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    kind = str(getattr(distributed_type, "value", distributed_type))
    asked = [name for key, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"))
             if str(env.get(key, "")).lower() in ("1", "true")]
    unmet = [name for name in asked if name.upper() != kind.upper()]
    if world > num_processes or unmet:
        raise RuntimeError(
            (f"launched as {world} processes but accelerate set up {num_processes} ({kind})" if world > num_processes
             else f"accelerate set up {kind}, not the {' and '.join(unmet)} asked for") + ": "
            + (f"accelerate's {' and '.join(unmet)} needs CUDA GPUs here; " if unmet else "")
            + "on CPU use torchrun --nproc-per-node N (fit: add --fsdp to shard a lora or full run with torch "
            "FSDP2), or accelerate launch --multi_gpu --num_processes N for plain data parallel")


def train(
    trainable: Any,
    train_groups: list[tuple[int, list[int]]],
    val_groups: list[tuple[int, list[int]]],
    cfg: FitConfig,
    out: Path,
    on_step: Callable[[dict[str, float]], None] | None = None,
    record: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train ``trainable`` (already set up); keep its best-validation state.

    ``record`` (JSON-ready) is written into every checkpoint as ``info["record"]``
    (:func:`~prefheads.training.checkpoint.checkpoint_info`): what the caller decided before
    training and must decide the same way when the run resumes (fit: the time budget's data cap).

    With ``cfg.fsdp`` on several processes the backbone and head train sharded (FSDP2) and are
    handed back whole at the end, on every process, as plain modules (the trainable's and its
    preference model's ``backbone`` and head are replaced by them).

    Returns:
        ``(history, best_epoch)``, one history record per epoch.
    """
    from accelerate import Accelerator

    # without a GPU, processes started by torchrun are CPU data parallel (gloo) only when accelerate
    # is told it runs on CPU; otherwise it sets up no distribution at all
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                      log_with=cfg.log_with, project_dir=str(out) if cfg.log_with else None,
                      cpu=not torch.cuda.is_available())
    check_launch(acc.num_processes, acc.distributed_type)
    if cfg.log_with:
        acc.init_trackers("prefheads", config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})
    rows = sorted({r for w, ls in train_groups for r in [w, *ls]})
    # a head started from a saved one keeps the standardiser its weights were trained with
    std = None if cfg.init_head else trainable.standardizer_features(rows)
    if std is not None:
        trainable.head.fit_standardizer(std)
    if not cfg.init_head:
        trainable.fit_score_standardizer(rows)
    shard = None
    if cfg.fsdp and acc.num_processes > 1:
        from prefheads.training.sharding import Sharding

        trainable.to(acc.device)  # what acc.prepare would do; sharding keeps the device it finds
        shard = Sharding(trainable)  # before the optimizer: parameters become their shards
    params = [p for p in trainable.parameters() if p.requires_grad]
    head_ids = {id(p) for p in trainable.head.parameters()}
    # --weight-decay is the head's: adapters and the backbone (held by the prior, if any) get none
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": cfg.head_lr or cfg.lr,
               "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if id(p) not in head_ids], "lr": cfg.lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.95))
    prior_group = _prior_group(opt, trainable.prior)
    batches_per_epoch = math.ceil(len(train_groups) / cfg.batch_size)
    # every epoch ends on an optimizer step (its last window of micro-batches may be shorter)
    total = max(1, cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum))
    sched = warmup_cosine_schedule(opt, int(cfg.warmup_ratio * total), total, cfg.final_lr_ratio)
    if shard is not None:  # the root's hooks gather weights; accelerate would wrap it in DDP
        model, opt = shard.root, acc.prepare(opt)
        inner = trainable
    else:
        model, opt = acc.prepare(trainable, opt)
        inner = acc.unwrap_model(model)
    # what validation scores through: under FSDP the root, whose forward gathers the weights
    scorer = model if shard is not None else inner
    state = shard.state if shard is not None else inner.trainable_state
    listwise = is_listwise(cfg.objective)
    val_pairs = sample_pairs(val_groups, torch.Generator().manual_seed(cfg.seed + 1)) if val_groups else None
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -1.0, 0, None
    start_epoch, start_batch, step = 1, 0, 0
    # the epoch's running totals and step records (metrics.jsonl lines) so far, kept by a
    # mid-epoch checkpoint so that a resumed epoch reports what an uninterrupted one does
    partial: dict[str, Any] = {}
    records = 0
    ckpt_dir = out / "checkpoint"
    if acc.is_main_process:  # what a run killed mid-write left: never a checkpoint to resume from
        remove_stale(ckpt_dir)
    acc.wait_for_everyone()
    found = find_checkpoint(ckpt_dir) if cfg.resume else None
    if found is not None:
        raw_opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        weights, best_state, info = load_checkpoint(found, shard.optimizer_loader(opt) if shard else raw_opt, sched)
        if shard is not None:  # full tensors on file: keep this process's shards
            weights, best_state = shard.scatter(weights), shard.scatter(best_state)
        inner.load_trainable_state(weights)
        history, best_score, best_epoch = info["history"], info["best_score"], info["best_epoch"]
        start_epoch, start_batch, step = info["epoch"], info["batch"], info["step"]
        partial, records = info.get("partial", {}), info.get("records", 0)

    def checkpoint(epoch: int, batch: int, partial: dict[str, Any]) -> None:
        weights, best, optim = state(), best_state, opt
        if shard is not None:  # every process gathers; the main one writes the one-process layout
            weights, best, optim = gather(weights), gather(best), shard.full_optimizer(opt)
        if acc.is_main_process:
            save_checkpoint(ckpt_dir, weights=weights, best=best, optimizer=optim, scheduler=sched,
                            info={"epoch": epoch, "batch": batch, "step": step, "history": history,
                                  "best_score": best_score, "best_epoch": best_epoch, "partial": partial,
                                  "records": records, "record": dict(record or {})})
        acc.wait_for_everyone()

    rank, world = acc.process_index, acc.num_processes
    for epoch in range(start_epoch, cfg.epochs + 1):
        resumed = partial if epoch == start_epoch and start_batch else {}
        t0 = time.perf_counter() - resumed.get("seconds", 0.0)
        model.train()
        pairs = (_epoch_lists if listwise else _epoch_pairs)(train_groups, cfg.seed, epoch)
        tot: dict[str, float] = {"loss": 0.0, "pair_accuracy": 0.0, "margin": 0.0, **resumed.get("totals", {})}
        seen = resumed.get("seen", 0)
        for b in range(start_batch if epoch == start_epoch else 0, batches_per_epoch):
            full = pairs[b * cfg.batch_size: (b + 1) * cfg.batch_size]
            batch = full[rank::world]
            # gradients are averaged over processes: weigh each share by its size, so the step is
            # the full batch's mean (a rank left without pairs joins the backward with weight 0)
            weight = len(batch) * world / len(full)
            batch = batch if len(batch) else full[:1]
            width = batch.shape[1]
            mask = batch >= 0 if listwise else None
            # padding (-1) reads the question's own preferred row; the mask drops it from the loss
            rows = torch.where(batch >= 0, batch, batch[:, :1]).reshape(-1)
            # accumulation windows restart each epoch and its last batch always steps: the micro-step
            # counter is a function of the position (a resumed run syncs where an uninterrupted one
            # does), and a window cut short by the epoch's end is averaged over its own length
            last = b + 1 == batches_per_epoch
            acc.step = cfg.grad_accum - 1 if last else b % cfg.grad_accum
            window = min(cfg.grad_accum, batches_per_epoch - (b - b % cfg.grad_accum))
            with acc.accumulate(model):
                with acc.autocast():
                    r, lp = model(rows)
                ref = inner.ref_logp[rows].view(-1, 2) if inner.ref_logp is not None else None
                loss, m = _loss(cfg, r.float().view(-1, width), None if lp is None else lp.view(-1, 2), ref, mask)
                acc.backward(loss * (weight * (cfg.grad_accum / window)))
                if acc.sync_gradients:
                    acc.clip_grad_norm_(params, cfg.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    if inner.prior is not None:  # at the lr of the step its parameters just took
                        inner.prior.step(opt.param_groups[prior_group]["lr"])
                    sched.step()
                    step += 1
            n = len(batch) if weight else 0
            seen += n
            records += 1
            for k in tot:
                tot[k] += float(m.get(k, m.get(f"dph/{k}", 0.0))) * n
            if cfg.log_with:
                acc.log({"loss": float(loss.detach()), **{k: float(v) for k, v in m.items()}}, step=step)
            if on_step and acc.is_main_process:
                on_step({"epoch": epoch, "step": step, "loss": float(loss.detach()),
                         "pair_accuracy": float(m.get("pair_accuracy", m.get("dph/pair_accuracy", 0.0))),
                         "margin": float(m.get("margin", m.get("dph/margin", 0.0))), "lr": sched.get_last_lr()[0]})
            if cfg.save_every and step % cfg.save_every == 0 and acc.sync_gradients and b + 1 < batches_per_epoch:
                checkpoint(epoch, b + 1, {"totals": tot, "seen": seen, "seconds": time.perf_counter() - t0})
        rec = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in tot.items()}, "seconds": time.perf_counter() - t0}
        rec["val_pair_accuracy"] = pair_accuracy(scorer, val_pairs) if val_pairs is not None else float("nan")
        rec["val_accuracy"] = choice_accuracy(scorer, val_groups)
        history.append(rec)
        # the best epoch by validation choice accuracy (the preferred answer above every other),
        # pair accuracy breaking ties; without validation the last epoch is kept
        score = rec["val_accuracy"] + 1e-3 * rec["val_pair_accuracy"] if val_groups else float(epoch)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in state().items()}
        checkpoint(epoch + 1, 0, {})
    if best_state is not None:
        if shard is not None:
            shard.reshard()
        inner.load_trainable_state(best_state)
    if shard is not None:
        shard.finish()
    inner.eval()
    if cfg.log_with:
        acc.end_training()
    if acc.is_main_process:
        (out / "history.json").write_text(json.dumps(history, indent=2))
        for d in (ckpt_dir, ckpt_dir.with_name(ckpt_dir.name + ".old")):  # finished: the heads are the result
            shutil.rmtree(d, ignore_errors=True)
    return history, best_epoch
