"""Which head recipe beats the LM's own log-prob? A grid of frozen heads on one task's cached features.

One backbone pass over the training rows and one over the eval rows (all requested layers and
the completions' log-probs, through the feature cache) serve every head in the grid: pooler ×
objective × LM score (``--lm-score``) × weight decay × layer (fixed, or ``auto`` chosen on the
validation split carved from the training rows). Prints each head's test accuracy and validation
accuracy, the layer and LM score it chose, and the log-prob rules on the same test rows.

    .venv/bin/python bench/head_recipes.py --task arc_easy --template lm-eval --layers=-1,10,14,18,20,22,24,26 \\
        --grid '{"pooler": "identity", "layer": "auto"}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, resolve_bench_base  # noqa: E402

AXES = {"pooler": ["identity", "swiglu"], "objective": ["separable", "contrastive", "listwise"],
        "lm_score": ["none", "auto"], "weight_decay": [0.0, 0.1], "layer": ["-1", "auto"]}


def splits(task: str, n_train: int, n_eval: int, template: str):
    from prefheads import tasks

    kw = {"data_dir": DATA, "shuffle": True, "seed": 0, "variant": template}
    if task in ("boolq", "piqa", "winogrande"):  # no local train split: carve both from the dev file
        ex = list(tasks.load_examples(task, split="eval", **kw))
        return ex[n_eval: n_eval + n_train], ex[:n_eval]
    return (list(tasks.load_examples(task, split="train", limit=n_train, **kw)),
            list(tasks.load_examples(task, split="eval", limit=n_eval, **kw)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--template", default="lm-eval")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--layers", default="-1", help="layers cached and searched by layer=auto")
    ap.add_argument("--grid", default="{}", help='JSON restricting the axes, e.g. {"pooler": "identity"}')
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--no-harness", action="store_true", help="skip the lm-evaluation-harness baselines")
    args = ap.parse_args()

    from prefheads import PreferenceModel
    from prefheads.hooks import parse_layers
    from prefheads.lmscores import all_lm_scores, lm_score
    from prefheads.eval.metrics import accuracy, choose
    from prefheads.training import FitConfig, fit
    from prefheads.training.cache import FeatureCache, cached_features
    from prefheads.training.data import from_examples

    pm = PreferenceModel.from_pretrained(resolve_bench_base(args.base))
    print(machine(), pm.model_id, flush=True)
    cache = FeatureCache(args.cache)
    tr, ev = splits(args.task, args.n_train, args.n_eval, args.template)
    cands, ecands = from_examples(tr, args.task), from_examples(ev, args.task)
    layers = parse_layers(args.layers, pm.num_layers)
    t0 = time.perf_counter()
    cached_features(pm, cands.prompts, cands.completions, layers, cache, logprobs=True)
    fev, _ = cached_features(pm, ecands.prompts, ecands.completions, layers, cache, logprobs=True)
    print(f"features: {time.perf_counter() - t0:.0f} s", flush=True)
    labels = [e.label for e in ev]
    off = np.cumsum([0] + [len(e.choices) for e in ev]).tolist()

    def acc(flat: list[float]) -> float:
        return accuracy(choose([flat[off[i]:off[i + 1]] for i in range(len(ev))])[0], labels)

    rules = {f"logprob:{n}": acc(v.tolist()) for n, v in all_lm_scores(fev.logprob_sum, fev.n_tokens, ecands.completions).items()}
    if not args.no_harness:  # the same rows scored exactly as lm-evaluation-harness scores them
        from prefheads.eval import lmeval_tables

        tables, info = lmeval_tables(pm, args.task, ev, variant=args.template, data_dir=DATA)
        if info["available"]:
            rules.update({m: acc([x for row in t for x in row]) for m, t in tables.items()})
    print(json.dumps({"task": args.task, "template": args.template, "n_train": len(tr), "n_eval": len(ev), **rules}), flush=True)
    keep = json.loads(args.grid)
    axes = {k: (keep[k] if isinstance(keep.get(k), list) else [keep[k]]) if k in keep else v for k, v in AXES.items()}
    tmp = tempfile.mkdtemp()
    for i, combo in enumerate(itertools.product(*axes.values())):
        g = dict(zip(axes, combo))
        t1 = time.perf_counter()
        cfg = FitConfig(task=args.task, out=f"{tmp}/{i}", epochs=args.epochs, batch_size=32, lr=1e-3, seed=0,
                        cache_dir=args.cache, head_name=f"h{i}", template=args.template,
                        layers=args.layers if g["layer"] == "auto" else None, **g)
        res = fit(cfg, pm=pm, progress=False, cands=cands)
        h = pm.heads[f"h{i}"]
        with torch.no_grad():
            h.eval()
            s = lm_score(h.config.score_input, fev.logprob_sum, fev.n_tokens, ecands.completions) if h.uses_scores else None
            test = acc(h(h.select(fev.states), s).tolist())
        sel = h.config.meta.get("lm_score", {})
        print(json.dumps({**g, "test": round(test, 4), "val": round(res.best["val_accuracy"], 4),
                          "layer_used": h.config.layer, "lm_score_used": sel.get("score"), "kept": sel.get("kept"),
                          "best_rule": max(rules.values()), "seconds": round(time.perf_counter() - t1, 1)}), flush=True)
        pm.remove_head(f"h{i}")


if __name__ == "__main__":
    main()
