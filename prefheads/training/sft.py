"""Language-model-loss training for the in-house pipeline's stages 1–2 (PAPER.md section 4).

* **Samples**: a prompt plus its target reply, rendered with the tokenizer's chat template up to
  and including the final end-of-turn token. Loss is on every token (``loss_on="all"``, stage 1,
  so the new ``<|im_start|>`` is learnt too) or only on the assistant content plus the final
  ``<|im_end|>`` (``loss_on="assistant"``, stage 2, as the paper prescribes).
* **Packing**: samples are ordered in runs of ``pack_n`` consecutive samples of one task (the
  paper's n = 5) before switching task, and concatenated greedily into rows of ``context``
  tokens, a sample never being split across rows. Samples in a row attend to earlier ones (the
  point of same-task runs: they act as in-context examples).
* **Training**: AdamW (β 0.9/0.95), linear warmup then cosine, gradient clipping, optional prior
  regularization toward the starting weights (:mod:`prefheads.optim`), and a parameter
  selection (``train="embeddings"`` freezes everything but the token embedding, which the LM
  head shares). The loss of a step is the mean over all its label tokens, whatever the
  micro-batching.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

IGNORE = -100


@dataclass
class LMTrainConfig:
    """Options of one LM-loss training run (a pipeline stage).

    Attributes:
        steps: Optimizer steps.
        batch_size: Packed rows per optimizer step.
        micro_batch_size: Rows per forward pass (gradients accumulate up to ``batch_size``).
        context: Tokens per packed row.
        pack_n: Consecutive samples of one task before switching task.
        lr: Peak learning rate.
        warmup_steps: Linear warmup steps.
        final_lr_ratio: Cosine decays to lr · final_lr_ratio (0: to zero).
        clip: Gradient-norm clip.
        weight_decay: AdamW decay toward 0 of parameters outside the prior.
        prior: Prior-regularization coefficient toward the starting weights (0: off).
        prior_exclude: Parameter-name substrings left out of the prior (``embed_tokens``).
        train: Which parameters train: ``embeddings`` (token embedding only) or ``all``.
        loss_on: ``assistant`` (assistant content + final end-of-turn) or ``all`` tokens.
        gradient_checkpointing: Recompute activations in the backward pass (saves memory).
        mixed_precision: ``no`` or ``bf16`` autocast (accelerators).
        seed: Seed of the sample order.
        log_every: Print a progress line every N steps (0: never).
    """

    steps: int = 100
    batch_size: int = 8
    micro_batch_size: int = 8
    context: int = 2048
    pack_n: int = 5
    lr: float = 3e-5
    warmup_steps: int = 0
    final_lr_ratio: float = 0.0
    clip: float = 1.0
    weight_decay: float = 0.0
    prior: float = 0.0
    prior_exclude: list[str] = field(default_factory=list)
    train: str = "all"
    loss_on: str = "assistant"
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("steps, batch_size and micro_batch_size must be >= 1")
        if self.context < 8 or self.pack_n < 1:
            raise ValueError("context must be >= 8 and pack_n >= 1")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.train not in ("embeddings", "all"):
            raise ValueError(f"train must be 'embeddings' or 'all', got {self.train!r}")
        if self.loss_on not in ("assistant", "all"):
            raise ValueError(f"loss_on must be 'assistant' or 'all', got {self.loss_on!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.prior < 0 or self.lr <= 0 or not 0 <= self.final_lr_ratio <= 1:
            raise ValueError("need prior >= 0, lr > 0 and final_lr_ratio in [0, 1]")

    def lm_fields(self) -> dict[str, Any]:
        """This config's own fields (subclasses add data fields)."""
        return {f: getattr(self, f) for f in LMTrainConfig.__dataclass_fields__}


@dataclass
class LMSample:
    """One training sample before tokenization.

    Attributes:
        task: Task it came from (packing groups by it).
        prompt: Chat messages ending with a user turn.
        completion: Target assistant reply.
    """

    task: str
    prompt: list[dict[str, str]]
    completion: str


def encode_sample(tokenizer: Any, fmt: Any, sample: LMSample, loss_on: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and labels ``(ids [T], labels [T])`` of one sample, ending at its end-of-turn token.

    ``labels`` is :data:`IGNORE` on the prompt (system / user turns and the assistant header)
    when ``loss_on="assistant"``; the final end-of-turn token is always a target.
    """
    from prefheads.chat import encode

    enc = encode(tokenizer, fmt, sample.prompt, sample.completion, max_length=max_length, name=sample.task)
    ids = np.asarray(enc.ids, dtype=np.int32)  # int32: a full-scale pool stays in memory
    labels = ids.copy()
    if loss_on == "assistant":
        labels[: enc.prompt_len] = IGNORE
    return ids, labels


def same_task_order(tasks: Sequence[str], pack_n: int, rng: random.Random) -> list[int]:
    """Sample indices in runs of ``pack_n`` consecutive samples of one task, runs shuffled.

    Each task's samples are shuffled, cut into runs of ``pack_n`` (the last run may be
    shorter), and the runs of all tasks interleaved in a random order, so every task appears in
    proportion to its size.
    """
    by_task: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    runs = []
    for t in sorted(by_task):
        idx = by_task[t]
        rng.shuffle(idx)
        runs += [idx[j: j + pack_n] for j in range(0, len(idx), pack_n)]
    rng.shuffle(runs)
    return [i for run in runs for i in run]


@dataclass
class PackedRow:
    """A row of concatenated samples.

    Attributes:
        ids: ``[T <= context]`` token ids.
        labels: ``[T]`` targets aligned with ``ids`` (shifted inside the loss), :data:`IGNORE` off-target.
        samples: Indices of the samples it holds, in order.
    """

    ids: np.ndarray
    labels: np.ndarray
    samples: list[int]


def packed_rows(samples: Sequence[LMSample], encode_fn: Callable[[int], tuple[np.ndarray, np.ndarray]],
                context: int, pack_n: int, seed: int = 0) -> Iterator[PackedRow]:
    """Endless packed rows over ``samples``, epoch after epoch (a fresh same-task order each).

    Args:
        samples: The pool.
        encode_fn: ``index -> (ids, labels)`` (memoised by the caller if wanted).
        context: Row length limit; every encoded sample must fit.
        pack_n: Run length of one task.
        seed: Order seed.
    """
    if not samples:
        raise ValueError("no training samples")
    tasks = [s.task for s in samples]
    rng = random.Random(seed)
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    members: list[int] = []
    used = 0
    while True:
        for i in same_task_order(tasks, pack_n, rng):
            a, b = encode_fn(i)
            if len(a) > context:
                raise ValueError(f"sample {i} ({samples[i].task}) has {len(a)} tokens > context {context}")
            if used + len(a) > context and members:
                yield PackedRow(np.concatenate(ids), np.concatenate(labels), members)
                ids, labels, members, used = [], [], [], 0
            ids.append(a)
            labels.append(b)
            members.append(i)
            used += len(a)


def collate(rows: Sequence[PackedRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids [B, T], labels [B, T], attention_mask [B, T])``."""
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.ids)
        ids[i, :n] = torch.from_numpy(r.ids.astype(np.int64))
        labels[i, :n] = torch.from_numpy(r.labels.astype(np.int64))
        mask[i, :n] = 1
    return ids, labels, mask


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy: ``logits [B, T, V]``, ``labels [B, T]`` -> ``(sum, n_targets)``."""
    target = labels[:, 1:]
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")
    return loss, int((target != IGNORE).sum())


def trainable_named_parameters(model: nn.Module, which: str) -> list[tuple[str, nn.Parameter]]:
    """Set ``requires_grad`` for ``which`` (``embeddings`` | ``all``) and return the trainable parameters.

    ``embeddings`` is the input token embedding plus the LM head's vocab matrix (one tensor when tied).
    """
    out_emb = model.get_output_embeddings()
    emb = {id(model.get_input_embeddings().weight)} | ({id(out_emb.weight)} if out_emb is not None else set())
    named = list(model.named_parameters())
    for _, p in named:
        p.requires_grad_(which == "all" or id(p) in emb)
    return [(n, p) for n, p in named if p.requires_grad]


def train_lm(model: nn.Module, rows: Iterator[PackedRow], cfg: LMTrainConfig, *, pad_id: int,
             out: Path | None = None, on_step: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` with the LM loss on packed ``rows`` for ``cfg.steps`` steps.

    Args:
        model: A causal LM (``model(input_ids, attention_mask).logits``).
        rows: Packed rows (see :func:`packed_rows`).
        cfg: Training options.
        pad_id: Padding id.
        out: Folder for ``metrics.jsonl`` (one record per step), if given.
        on_step: Called with each step's record.

    Returns:
        One record per step: ``step``, ``loss`` (mean over label tokens), ``lr``, ``grad_norm``,
        ``tokens`` (label tokens), ``seconds``.
    """
    from prefheads.optim import prior_param_groups, warmup_cosine_schedule

    device = next(model.parameters()).device
    named = trainable_named_parameters(model, cfg.train)
    params = [p for _, p in named]
    if cfg.prior > 0:
        groups, prior = prior_param_groups(named, cfg.prior, exclude=tuple(cfg.prior_exclude),
                                           weight_decay=cfg.weight_decay)
    else:
        groups, prior = [{"params": params, "weight_decay": cfg.weight_decay}], None
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    if prior is not None and len(prior):
        prior.attach(opt)
    sched = warmup_cosine_schedule(opt, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio)
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.train()
    history: list[dict[str, float]] = []
    mf = open(out / "metrics.jsonl", "w") if out is not None else None
    try:
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            batch = [next(rows) for _ in range(cfg.batch_size)]
            n_targets = sum(int((r.labels[1:] != IGNORE).sum()) for r in batch)
            total = 0.0
            for j in range(0, len(batch), cfg.micro_batch_size):
                ids, labels, mask = (t.to(device) for t in collate(batch[j: j + cfg.micro_batch_size], pad_id))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                    logits = model(input_ids=ids, attention_mask=mask).logits
                loss_sum, _ = lm_loss_sum(logits, labels)
                (loss_sum / max(n_targets, 1)).backward()
                total += float(loss_sum.detach())
            gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip))
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            rec = {"step": step, "loss": total / max(n_targets, 1), "lr": lr, "grad_norm": gn,
                   "tokens": n_targets, "seconds": time.perf_counter() - t0}
            history.append(rec)
            if mf:
                mf.write(json.dumps(rec) + "\n")
            if on_step:
                on_step(rec)
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                print(f"  step {step}/{cfg.steps}  loss {rec['loss']:.4f}  lr {lr:.2e}  |g| {gn:.2f}", flush=True)
    finally:
        if mf:
            mf.close()
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
            model.gradient_checkpointing_disable()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def perplexity(history: Sequence[dict[str, float]], last: int = 10) -> float:
    """exp of the mean loss of the last ``last`` steps (a smoothed progress number)."""
    tail = [h["loss"] for h in history[-last:]]
    return math.exp(sum(tail) / len(tail)) if tail else float("nan")
