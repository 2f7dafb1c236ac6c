"""Shared-prefix scoring vs full re-encoding of every candidate, on SmolLM2 and real data.

For RACE-high test, BoolQ dev and ARC-Easy test (a seeded sample of each, paper template) it
scores every candidate the way ``prefheads eval`` does — a fresh SwiGLU head's reward plus the
log-probs, from one pass — twice: with the shared prefix (each prompt encoded once, then only the
answers against its KV cache) and with full re-encoding (``shared_prefix=False``). It checks that
both give the same rewards and log-probs within 1e-4 and prints per task: examples, candidates,
tokens encoded each way, the theoretical token-count ratio, seconds each way and the speed-up.

    flock /tmp/prefheads-heavy.lock .venv/bin/python bench/shared_prefix.py --n 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402

TASKS = ["race/high", "boolq", "arc_easy"]
TOL = 1e-4


def token_counts(pm, examples) -> tuple[int, int]:
    """Tokens a full re-encoding runs, and tokens the shared-prefix path runs (each prompt once)."""
    prompts = [ex.prompt for ex in examples for _ in ex.choices]
    comps = [c for ex in examples for c in ex.choices]
    items = pm.encode(prompts, comps)
    full = sum(len(it.ids) for it in items)
    prefixes = {tuple(it.ids[: it.prompt_len]) for it in items}
    shared = sum(len(p) for p in prefixes) + sum(len(it.ids) - it.prompt_len for it in items)
    return full, shared


def flat(table_: list[list[float]]) -> torch.Tensor:
    return torch.tensor([v for row in table_ for v in row], dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="examples per task (seeded random sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    from prefheads import PreferenceModel, tasks
    from prefheads.eval import score_examples

    t0 = time.perf_counter()
    pm = PreferenceModel.from_pretrained()
    torch.manual_seed(args.seed)
    pm.add_head("bench", "swiglu")  # a fresh head: its rewards exercise the same path as a trained one
    load_s = time.perf_counter() - t0
    warm = tasks.load_examples("arc_easy", "eval", DATA, limit=1)
    for sp in (True, False):  # first-call costs (allocator, kernels) out of the timings
        score_examples(pm, warm, shared_prefix=sp)

    rows = []
    for name in args.tasks.split(","):
        exs = tasks.load_examples(name, "eval", DATA, limit=args.n, shuffle=True, seed=args.seed)
        full_tok, shared_tok = token_counts(pm, exs)
        secs, out = {}, {}
        for sp in (True, False):
            t = time.perf_counter()
            out[sp] = score_examples(pm, exs, shared_prefix=sp)
            secs[sp] = time.perf_counter() - t
        diff = {
            "reward": float((flat(out[True].rewards["bench"]) - flat(out[False].rewards["bench"])).abs().max()),
            "logprob_sum": float((flat(out[True].logprob_sum) - flat(out[False].logprob_sum)).abs().max()),
            "logprob_mean": float((flat(out[True].logprob) - flat(out[False].logprob)).abs().max()),
        }
        row = {"task": name, "examples": len(exs), "candidates": sum(len(e.choices) for e in exs),
               "tokens full": full_tok, "tokens shared": shared_tok, "token ratio": round(full_tok / shared_tok, 2),
               "s full": round(secs[False], 2), "s shared": round(secs[True], 2),
               "speed-up": round(secs[False] / secs[True], 2),
               "max diff reward": f"{diff['reward']:.1e}", "max diff mean log-prob": f"{diff['logprob_mean']:.1e}",
               "max diff log-prob sum": f"{diff['logprob_sum']:.1e}",
               # the eval scores: reward and mean log-prob (the sum is shown for information)
               "agree": diff["reward"] <= TOL and diff["logprob_mean"] <= TOL}
        rows.append(row)
        print(json.dumps(row), flush=True)

    tot_full, tot_shared = sum(r["s full"] for r in rows), sum(r["s shared"] for r in rows)
    cols = ["task", "examples", "candidates", "tokens full", "tokens shared", "token ratio", "s full", "s shared",
            "speed-up", "max diff reward", "max diff mean log-prob", "max diff log-prob sum", "agree"]
    print()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}; model {pm.model_id} (fp32), "
          f"loaded in {load_s:.1f}s; data {DATA}")
    print(table(rows, cols))
    print(f"\ntotal: full {tot_full:.1f}s, shared {tot_shared:.1f}s, speed-up {tot_full / tot_shared:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not all(r["agree"] for r in rows):
        sys.exit(f"shared-prefix and full scores differ by more than {TOL}")


if __name__ == "__main__":
    main()
