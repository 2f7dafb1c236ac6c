"""Scoring throughput: prefheads vs a transformers reward model vs the bare backbone (the limit).

On the same real preference pairs (bundled HH-RLHF helpful-base test slice), the same sequences
and the same length-bucketed batches, it times:

* ``bare``: the decoder alone (``model.model``), no head: the floor any scorer pays;
* ``seqcls``: ``AutoModelForSequenceClassification`` built from the same weights (a last-token
  linear head, as TRL's RewardTrainer uses);
* ``ref-style``: the causal LM with ``output_hidden_states=True`` (vocab projection and every
  layer materialised), as the paper's reference code reads its states;
* ``prefheads``: ``score`` with a SwiGLU head, full encoding (same work as the others) and with
  shared-prefix encoding (chosen and rejected share their prompt).

It also measures the machine's fp32 matmul peak and the backbone's achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Measured fp32 GEMM FLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def forward_flops(cfg, lengths: list[int]) -> float:
    """Matmul FLOPs of a Llama-style decoder over sequences of these lengths (no vocab projection)."""
    d, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_tok = 2 * L * (d * d * 2 + 2 * d * kv + 3 * d * f)  # q,o + k,v + gate/up/down
    attn = sum(2 * L * 2 * n * n * d for n in lengths) / 2  # QK^T and AV, causal half
    return per_tok * sum(lengths) + attn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=4096)
    args = ap.parse_args()

    from transformers import AutoModelForSequenceClassification

    from prefheads import PreferenceModel, tasks
    from prefheads.engine import _buckets, _pad

    pm = PreferenceModel.from_pretrained()
    pm.add_head("h", "swiglu")
    pm.heads["h"].eval()
    pairs = list(tasks.load_pairs("hh_rlhf", split="eval", data_dir="bundled", limit=args.pairs))
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    comps = [c for p in pairs for c in (p.chosen, p.rejected)]
    items = pm.encode(prompts, comps)
    lengths = [len(i.ids) for i in items]
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    batches = _buckets(lengths, order, args.max_tokens, 64)
    n_tok = sum(lengths)
    lm = pm.backbone
    seq = AutoModelForSequenceClassification.from_config(lm.config, dtype=torch.float32)
    seq.model.load_state_dict(lm.model.state_dict())
    seq.config.pad_token_id = pm.tokenizer.pad_token_id
    seq.eval()

    def run_batches(fn) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                ids, mask = _pad([items[i].ids for i in b], pm.tokenizer.pad_token_id, "right")
                fn(ids, mask)
        return time.perf_counter() - t

    timings = {}
    for rep in range(2):  # the first round warms up; the second is reported
        timings["bare"] = run_batches(lambda i, m: lm.model(input_ids=i, attention_mask=m))
        timings["seqcls"] = run_batches(lambda i, m: seq(input_ids=i, attention_mask=m))
        timings["ref-style"] = run_batches(lambda i, m: lm(input_ids=i, attention_mask=m, output_hidden_states=True))
        t = time.perf_counter()
        full = pm.score(prompts, comps, shared_prefix=False)
        timings["prefheads (full encoding)"] = time.perf_counter() - t
        t = time.perf_counter()
        shared = pm.score(prompts, comps, shared_prefix=True)
        timings["prefheads (shared prefix)"] = time.perf_counter() - t
    assert torch.allclose(full, shared, atol=1e-4)
    peak = matmul_peak()
    flops = forward_flops(lm.config, lengths)
    rows = [{"scorer": k, "seconds": v, "pairs_per_s": len(pairs) / v, "tokens_per_s": n_tok / v,
             "time_vs_bare": v / timings["bare"]} for k, v in timings.items()]
    print(machine(), pm.model_id, f"{len(pairs)} pairs, {n_tok} tokens, {len(batches)} batches")
    print(table(rows, ["scorer", "seconds", "pairs_per_s", "tokens_per_s", "time_vs_bare"]))
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; backbone forward {flops / timings['bare'] / 1e9:.1f} GFLOP/s "
          f"= {100 * flops / timings['bare'] / peak:.0f}% of peak")
    print(json.dumps({"timings": timings, "peak": peak, "flops": flops, "tokens": n_tok}))


if __name__ == "__main__":
    main()
