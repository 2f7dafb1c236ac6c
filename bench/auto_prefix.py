"""Shared prefix or full encoding: where does each win, and does ``shared_prefix="auto"`` pick it?

For real workloads (HH-RLHF conversations with 2 and 8 replies, one request alone and several
pooled as the server pools them; ARC-Easy, BoolQ and PIQA questions with their answers) it
scores every candidate with a fresh SwiGLU head both ways — shared prefix and full encoding —
and prints the padded-token ratio of the two plans (:func:`prefheads.engine.plan_tokens`), the
seconds of each (best of ``--repeat`` interleaved rounds), the measured speed-up of the shared
prefix, the path ``"auto"`` picks (it runs exactly that path; tests/test_engine.py checks it),
whether that was the faster one, and the largest reward difference. The break-even token ratio
is where the measured speed-up crosses 1; ``AUTO_MARGIN`` in prefheads/engine.py should sit at
or above it.

    .venv/bin/python bench/auto_prefix.py --repeat 2 --n-pool 4 --n-choice 4
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
from common import DATA, hh_requests, machine, table  # noqa: E402


def workloads(n_choice: int, n_pool: int) -> dict[str, tuple[list, list[str]]]:
    """name -> aligned (prompts, completions)."""
    from prefheads import tasks

    def flat(reqs):
        return [p for p, cs in reqs for _ in cs], [c for _, cs in reqs for c in cs]

    out = {
        "hh 2 replies, 1 request": flat(hh_requests(1, 2)),
        "hh 8 replies, 1 request": flat(hh_requests(1, 8)),
        f"hh 2 replies, {2 * n_pool} requests": flat(hh_requests(2 * n_pool, 2)),
        f"hh 8 replies, {n_pool} requests": flat(hh_requests(n_pool, 8)),
    }
    for name in ("arc_easy", "boolq", "piqa"):
        exs = tasks.load_examples(name, "eval", DATA, limit=n_choice, shuffle=True, seed=0)
        out[f"{name}, {n_choice} questions"] = ([e.prompt for e in exs for _ in e.choices],
                                                 [c for e in exs for c in e.choices])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--n-choice", type=int, default=4, help="questions per multiple-choice task")
    ap.add_argument("--n-pool", type=int, default=4, help="HH-RLHF requests pooled (twice as many with 2 replies)")
    args = ap.parse_args()

    from prefheads import PreferenceModel
    from prefheads.engine import AUTO_MARGIN, choose_shared_prefix, plan_tokens

    pm = PreferenceModel.from_pretrained()
    torch.manual_seed(0)
    pm.add_head("bench", "swiglu")
    rows = []
    for name, (prompts, comps) in workloads(args.n_choice, args.n_pool).items():
        items = pm.encode(prompts, comps)
        full_tok, shared_tok = plan_tokens(items, pm.max_tokens)
        pm.score(prompts[:2], comps[:2])  # warm-up
        best = {True: float("inf"), False: float("inf")}
        out = {}
        for _ in range(args.repeat):
            for sp in (True, False):
                t = time.perf_counter()
                out[sp] = pm.score(prompts, comps, shared_prefix=sp)
                best[sp] = min(best[sp], time.perf_counter() - t)
        picks = choose_shared_prefix(items, pm.max_tokens)
        faster = best[True] < best[False]
        row = {"workload": name, "candidates": len(comps), "padded tokens full": full_tok,
               "padded tokens shared": shared_tok, "token ratio": round(full_tok / shared_tok, 2),
               "s full": round(best[False], 2), "s shared": round(best[True], 2),
               "shared speed-up": round(best[False] / best[True], 2),
               "auto picks": "shared" if picks else "full", "auto picked the faster": picks == faster,
               "auto vs faster": round(best[picks] / min(best.values()), 2),
               "max diff": f"{float((out[True] - out[False]).abs().max()):.1e}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine()}; load average {os.getloadavg()[0]:.1f}; AUTO_MARGIN {AUTO_MARGIN}")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
