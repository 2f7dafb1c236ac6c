"""Batched feature extraction: last-token hidden states (and optionally log-probs) per candidate.

Two exact strategies, both length-bucketed (no fixed-length padding):

* **shared prefix**: the prompt of each group of candidates is encoded once; its KV cache is
  indexed per candidate and only the completion tokens are run again;
* **full**: every candidate sequence is encoded on its own (the reference).

``shared_prefix="auto"`` (the default of :func:`extract`) picks one per call from the padded
tokens each plan would run (:func:`choose_shared_prefix`): the shared prefix pays a second
forward and a KV-cache copy per chunk, so it is used only where it saves enough prompt tokens.

Both call the backbone's decoder (``model.base_model``) rather than the causal-LM wrapper, so
the vocab projection is never computed unless log-probs are requested, and then only on the
completion positions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import inspect

import torch
from torch import nn

from prefheads.chat import Encoded
from prefheads.families import FamilyProfile, get_module, text_config, unwrap
from prefheads.hooks import FINAL, Capture


@dataclass
class Features:
    """Outputs of :func:`extract`, in the order of the input candidates.

    Attributes:
        states: layer -> ``[N, d]`` fp32 hidden states at each reward token.
        logprob_sum: ``[N]`` summed log-probabilities of the completion tokens (reward token
            included), or ``None``.
        n_tokens: ``[N]`` number of completion tokens scored.
        raw_logprob_sum: ``[N]`` summed log-probs of the same completions in the raw view
            (:mod:`prefheads.rawtext`: no chat template), where a second pass computed them.
        raw_n_tokens: ``[N]`` their token counts in that view.
    """

    states: dict[int, torch.Tensor]
    logprob_sum: torch.Tensor | None
    n_tokens: torch.Tensor
    raw_logprob_sum: torch.Tensor | None = None
    raw_n_tokens: torch.Tensor | None = None


def _decoder(model: nn.Module) -> nn.Module:
    inner = unwrap(model)
    return inner.base_model if hasattr(inner, "base_model") else inner


def _cache_kw(dec: nn.Module) -> str:
    # transformers >= 5.24 renamed past_key_values -> cache
    return "cache" if "cache" in inspect.signature(dec.forward).parameters else "past_key_values"


def _device(model: nn.Module) -> torch.device:
    return next(unwrap(model).parameters()).device


# How causal LMs scale the vocab projection's output, as their transformers modeling code does:
# model_type -> (text config field, "div" | "mul"). A field set to None leaves the logits as they are.
LOGIT_SCALINGS: dict[str, tuple[str, str]] = {
    **{mt: ("logits_scaling", "div") for mt in (
        "granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared",
        "granite4_vision", "granite_docling", "minicpm3")},
    "hyperclovax": ("logits_scaling", "mul"),
    **{mt: ("logit_scale", "mul") for mt in ("cohere", "cohere2", "cohere2_moe", "cohere_compass")},
}


def logit_scaling(model: nn.Module) -> tuple[str, float] | None:
    """How ``model`` scales its logits (:data:`LOGIT_SCALINGS`): ``("div" | "mul", value)``, or None."""
    inner = unwrap(model)
    rule = LOGIT_SCALINGS.get(getattr(inner.config, "model_type", None))
    if rule is None:
        return None
    field, op = rule
    value = getattr(text_config(inner), field, None)
    return None if value is None else (op, float(value))


def _logits_fn(model: nn.Module, profile: FamilyProfile):
    """Hidden states after the final norm -> the logits the causal LM itself computes: its
    ``output_proj`` (OPT's ``project_out``), the vocab projection, the family's logit scaling
    and final soft-capping."""
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    proj = get_module(inner, profile.output_proj, optional=True) if profile.output_proj else None
    scaling = logit_scaling(inner)
    cap = getattr(inner.config, "final_logit_softcapping", None)

    def fn(h: torch.Tensor) -> torch.Tensor:
        logits = head(proj(h) if proj is not None else h)
        if scaling is not None:
            op, value = scaling
            logits = logits / value if op == "div" else logits * value
        logits = logits.float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return fn


def _pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask


def _buckets(lengths: list[int], order: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Split ``order`` (indices sorted by length) into batches of at most max_tokens padded tokens."""
    out, cur, longest = [], [], 0
    for i in order:
        L = lengths[i]
        if cur and (max(longest, L) * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, L)
    if cur:
        out.append(cur)
    return out


def _group_chunks(plen: list[int], smax: list[int], nmem: list[int], max_tokens: int,
                  max_batch: int) -> list[list[int]]:
    """Chunks of prompt groups for the shared-prefix engine, bounded by padded tokens.

    A chunk costs ``groups × longest prefix`` (prefix pass) + ``members × longest suffix``
    (suffix pass). Groups are ordered by whichever side carries more tokens (prefix length, or
    longest suffix when the answers outweigh the prompts, e.g. PIQA), so padding stays small.
    """
    by_suffix = sum(s * m for s, m in zip(smax, nmem)) > sum(plen)
    order = sorted(range(len(plen)), key=lambda g: (smax[g], plen[g]) if by_suffix else (plen[g], smax[g]))
    out: list[list[int]] = []
    cur: list[int] = []
    p = sfx = members = 0
    for g in order:
        np_, ns, nm = max(p, plen[g]), max(sfx, smax[g]), members + nmem[g]
        if cur and ((len(cur) + 1) * np_ + nm * ns > max_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur, np_, ns, nm = [], plen[g], smax[g], nmem[g]
        cur.append(g)
        p, sfx, members = np_, ns, nm
    if cur:
        out.append(cur)
    return out


# The shared prefix must run this many times fewer padded tokens than full encoding to be
# picked: below it the second forward (short answers against a long cached prompt, small
# matrix products) and the per-candidate KV-cache copy cost more than the prompt tokens saved.
# Measured on CPU with bench/auto_prefix.py (docs/benchmarks.md, "Shared prefix or full"):
# at token ratios 1.11-1.17 the shared prefix was 0.80-0.96x as fast, at 1.20-1.32 1.06-1.19x.
AUTO_MARGIN = 1.2


def _prompt_groups(items: list[Encoded], max_tokens: int | None = None,
                   max_batch: int | None = None) -> list[tuple[tuple[int, ...], list[int]]]:
    """Candidates by their prompt ids (the shared prefix): ``(prefix, members)``, groups in first-seen
    order, members by length.

    With ``max_tokens`` / ``max_batch`` a group too large for one forward (thousands of answers
    to one prompt) is split, its members ordered by answer length, into pieces of at most
    ``max_batch`` members whose prefix plus padded answers fit ``max_tokens`` (a piece always
    holds at least one member); each piece encodes the prefix again, which is cheap beside the
    memory a single unbounded forward would take.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[tuple(it.ids[: it.prompt_len])].append(i)
    out: list[tuple[tuple[int, ...], list[int]]] = []
    for key, members in groups.items():
        members = sorted(members, key=lambda i: len(items[i].ids))
        piece: list[int] = []
        for i in members:
            longest = len(items[i].ids) - len(key)  # members are sorted: the newest is the longest
            if piece and ((max_batch is not None and len(piece) >= max_batch)
                          or (max_tokens is not None and len(key) + (len(piece) + 1) * longest > max_tokens)):
                out.append((key, piece))
                piece = []
            piece.append(i)
        out.append((key, piece))
    return out


def _group_sizes(items: list[Encoded], groups: list[tuple[tuple[int, ...], list[int]]]
                 ) -> tuple[list[int], list[int], list[int]]:
    """Per group: prefix length, longest answer, members."""
    plen = [len(k) for k, _ in groups]
    smax = [max(len(items[i].ids) - len(k) for i in m) for k, m in groups]
    return plen, smax, [len(m) for _, m in groups]


def plan_tokens(items: list[Encoded], max_tokens: int = 4096, max_batch: int = 64) -> tuple[int, int]:
    """Padded tokens each strategy would run over ``items``: ``(full, shared_prefix)``.

    Both count exactly the forwards :func:`extract` would make: full encoding's length buckets
    (rows × longest row), and the shared prefix's chunks (prompts × longest prompt + answers ×
    longest answer).
    """
    lengths = [len(it.ids) for it in items]
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    full = sum(len(b) * max(lengths[i] for i in b) for b in _buckets(lengths, order, max_tokens, max_batch))
    plen, smax, nmem = _group_sizes(items, _prompt_groups(items, max_tokens, max_batch))
    shared = sum(len(c) * max(plen[g] for g in c) + sum(nmem[g] for g in c) * max(smax[g] for g in c)
                 for c in _group_chunks(plen, smax, nmem, max_tokens, max_batch))
    return full, shared


def choose_shared_prefix(items: list[Encoded], max_tokens: int = 4096, max_batch: int = 64,
                         margin: float = AUTO_MARGIN) -> bool:
    """Whether the shared prefix is worth it for ``items``: full encoding would run more than
    ``margin`` times its padded tokens (see :data:`AUTO_MARGIN`)."""
    full, shared = plan_tokens(items, max_tokens, max_batch)
    return full > margin * shared


def _gather_logprobs(logits_fn, hidden: torch.Tensor, targets: torch.Tensor, tmask: torch.Tensor,
                     chunk: int = 512) -> torch.Tensor:
    """Sum of log p(target) over positions where tmask; hidden ``[B, S, d]`` predicts targets ``[B, S]``.

    All selected positions of the batch go through the vocab projection together, ``chunk`` rows
    at a time (bounds the ``[chunk, V]`` logits), as ``logit[target] - logsumexp(logits)``.
    """
    rows, cols = tmask.nonzero(as_tuple=True)
    out = torch.zeros(hidden.shape[0])
    if rows.numel() == 0:
        return out
    h = hidden[rows.to(hidden.device), cols.to(hidden.device)]
    t = targets[rows, cols].to(h.device)
    vals = []
    for s in range(0, h.shape[0], chunk):
        logits = logits_fn(h[s: s + chunk]).float()
        vals.append((logits.gather(-1, t[s: s + chunk, None]).squeeze(-1) - torch.logsumexp(logits, -1)).cpu())
    return out.index_add_(0, rows.cpu(), torch.cat(vals).to(out.dtype))


def extract(
    model: nn.Module,
    profile: FamilyProfile,
    items: list[Encoded],
    layers: list[int],
    *,
    pad_id: int,
    logprobs: bool = False,
    shared_prefix: bool | str = "auto",
    padding_side: str = "right",
    max_tokens: int = 4096,
    max_batch: int = 64,
    grad: bool = False,
) -> Features:
    """Run the backbone over ``items`` and read hidden states at each reward token.

    Args:
        model: Causal LM (possibly peft-wrapped); not modified.
        profile: Its family profile.
        items: Encoded candidates (see :func:`prefheads.chat.encode`).
        layers: Hidden states to return (-1: after the final norm; i: block i).
        pad_id: Padding token id (its value never matters: pads are masked).
        logprobs: Also compute summed completion log-probs.
        shared_prefix: ``True``: encode each distinct prompt once; ``False``: encode every
            sequence in full; ``"auto"`` (default): whichever runs fewer tokens by the margin
            of :func:`choose_shared_prefix`. All three give the same results.
        padding_side: ``"right"`` or ``"left"`` for full encoding (results are identical).
        max_tokens: Padded-token budget per forward.
        max_batch: Most sequences per forward.
        grad: Keep the autograd graph (LoRA / full training); default no-grad.
    """
    if not items:
        raise ValueError("nothing to score: no candidates given")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if shared_prefix not in (True, False, "auto"):
        raise ValueError(f"shared_prefix must be True, False or 'auto', got {shared_prefix!r}")
    if shared_prefix == "auto":
        shared_prefix = choose_shared_prefix(items, max_tokens, max_batch)
    with torch.set_grad_enabled(grad):
        if shared_prefix:
            return _extract_shared(model, profile, items, layers, pad_id, logprobs, max_tokens, max_batch)
        return _extract_full(model, profile, items, layers, pad_id, logprobs, padding_side, max_tokens, max_batch)


def _init(n: int, logprobs: bool):
    return defaultdict(dict), (torch.zeros(n) if logprobs else None), torch.zeros(n, dtype=torch.long)


def _finish(states: dict, n: int, layers: list[int], lp, nt) -> Features:
    out = {l: torch.stack([states[l][i] for i in range(n)]).float().cpu() for l in layers}
    return Features(out, lp, nt)


def _extract_full(model, profile, items, layers, pad_id, logprobs, side, max_tokens, max_batch) -> Features:
    dec, dev = _decoder(model), _device(model)
    logits_fn = _logits_fn(model, profile) if logprobs else None
    n = len(items)
    states, lp, nt = _init(n, logprobs)
    lengths = [len(it.ids) for it in items]
    order = sorted(range(n), key=lambda i: lengths[i])
    for batch in _buckets(lengths, order, max_tokens, max_batch):
        ids, mask = _pad([items[i].ids for i in batch], pad_id, side)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        # row-wise index of the reward token: the last real token of each row
        if side == "right":
            read = torch.tensor([lengths[i] - 1 for i in batch])
        else:
            read = torch.full((len(batch),), ids.shape[1] - 1)
        with Capture(model, profile, layers, read, full_final=logprobs) as cap:
            dec(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=False)
        for j, i in enumerate(batch):
            for l in layers:
                states[l][i] = cap.states[l][j]
        if logprobs:
            T = ids.shape[1]
            offs = T - torch.tensor([lengths[i] for i in batch]) if side == "left" else torch.zeros(len(batch), dtype=torch.long)
            targets = torch.zeros_like(ids)
            tmask = torch.zeros_like(ids, dtype=torch.bool)
            for j, i in enumerate(batch):
                P, L, o = items[i].prompt_len, lengths[i], int(offs[j])
                # hidden at t predicts token t+1; completion tokens are P..L-1
                targets[j, o + P - 1: o + L - 1] = torch.tensor(items[i].ids[P:L])
                tmask[j, o + P - 1: o + L - 1] = True
                nt[i] = L - P
            lp[batch] = _gather_logprobs(logits_fn, cap.final_full, targets, tmask)
    return _finish(states, n, layers, lp, nt)


def _extract_shared(model, profile, items, layers, pad_id, logprobs, max_tokens, max_batch) -> Features:
    from transformers import DynamicCache

    dec, dev = _decoder(model), _device(model)
    ckw = _cache_kw(dec)
    logits_fn = _logits_fn(model, profile) if logprobs else None
    n = len(items)
    states, lp, nt = _init(n, logprobs)
    groups = _prompt_groups(items, max_tokens, max_batch)
    plen, smax, nmem = _group_sizes(items, groups)
    for chunk in _group_chunks(plen, smax, nmem, max_tokens, max_batch):
        prefixes = [list(groups[g][0]) for g in chunk]
        pids, pmask = _pad(prefixes, pad_id, "left")
        ppos = (pmask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        last = torch.full((len(chunk),), pids.shape[1] - 1)
        pre_layers = [FINAL] if logprobs else []
        with Capture(model, profile, pre_layers or layers, last if logprobs else None,
                     early_exit=not logprobs) as pcap:
            dec(input_ids=pids.to(dev), attention_mask=pmask.to(dev), position_ids=ppos.to(dev),
                use_cache=True, **{ckw: cache})
        members = [i for g in chunk for i in groups[g][1]]
        owner = torch.tensor([j for j, g in enumerate(chunk) for _ in groups[g][1]])
        cache.reorder_cache(owner.to(dev))
        suffixes = [items[i].ids[items[i].prompt_len:] for i in members]
        sids, smask = _pad(suffixes, pad_id, "right")
        plens = torch.tensor([len(groups[chunk[int(o)]][0]) for o in owner])
        spos = plens[:, None] + torch.arange(sids.shape[1])[None, :]
        mask = torch.cat([pmask[owner], smask], dim=1)
        read = torch.tensor([len(s) - 1 for s in suffixes])
        with Capture(model, profile, layers, read, full_final=logprobs) as cap:
            dec(input_ids=sids.to(dev), attention_mask=mask.to(dev), position_ids=spos.to(dev),
                use_cache=True, **{ckw: cache})
        for j, i in enumerate(members):
            for l in layers:
                states[l][i] = cap.states[l][j]
        if logprobs:
            # the first completion token is predicted by the prompt's last position
            hid = torch.cat([pcap.states[FINAL][owner][:, None, :].to(cap.final_full.dtype), cap.final_full[:, :-1]], 1)
            tmask = smask.bool()
            lp[members] = _gather_logprobs(logits_fn, hid, sids, tmask)
            nt[members] = smask.sum(-1)
    return _finish(states, n, layers, lp, nt)
