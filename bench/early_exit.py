"""Early exit: scoring with a head on block i stops the backbone there. Time vs the full forward.

SmolLM2 (30 blocks), real SST-2 dev sentences, paper template: heads at blocks 5, 10, 20 and at
the final norm score the same candidates; rewards of the early-exit run are checked against a
pass that runs every layer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()

    from prefheads import PreferenceModel, tasks
    from prefheads.training.cache import layer_features

    pm = PreferenceModel.from_pretrained()
    ex = tasks.load_examples("glue/sst2", split="eval", data_dir=DATA, limit=args.n)
    prompts = [e.prompt for e in ex for _ in e.choices]
    comps = [c for e in ex for c in e.choices]
    layers = [5, 10, 20, -1]
    for l in layers:
        pm.add_head(f"L{l}", "swiglu", layer=l, dropout=0.0)
    pm.score(prompts[:8], comps[:8], head="L-1")  # warm-up
    full_states = layer_features(pm, prompts, comps, "all")
    rows = []
    base = None
    for l in reversed(layers):
        t = time.perf_counter()
        r = pm.score(prompts, comps, head=f"L{l}")
        s = time.perf_counter() - t
        base = base or s
        exact = float((r - pm(full_states, f"L{l}")).abs().max())
        rows.append({"head_layer": "final" if l == -1 else l, "blocks_run": pm.num_layers if l == -1 else l + 1,
                     "seconds": s, "speedup_vs_final": base / s, "max_abs_diff_vs_full_pass": exact})
        print(rows[-1], flush=True)
    print(machine(), pm.model_id, f"{len(comps)} candidates")
    print(table(rows, ["head_layer", "blocks_run", "seconds", "speedup_vs_final", "max_abs_diff_vs_full_pass"]))


if __name__ == "__main__":
    main()
