"""The real-data result table: frozen probes on SmolLM2 (or another base) vs log-prob scoring.

For each task, on the same seeded train/eval splits of the real copies in ../shared/data:
log-prob accuracy (paper template, mean over tokens), a DPH head at the last layer, a DPH head at
the layer chosen on a validation split carved from the training data (``--layer auto``), a
layer-mix head over every layer, and a scikit-learn logistic-regression probe on the same cached
last-layer features. Every method's predicted-answer distribution is printed, since a method
that always answers "yes" can look fine by accuracy alone. One backbone pass per split serves
every head (all layers captured at once).

Log-prob is reported under both template families: the paper's (mean over the assistant tokens)
and lm-evaluation-harness's own prompt scored exactly as the harness does (``acc``, ``acc_norm``,
``mean``; tasks the harness defines), on the same rows. ``baseline`` is the strongest of them:
the number a head has to beat. ``--baselines-only`` skips the heads (log-prob columns only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, resolve_bench_base, table  # noqa: E402

TASKS = ["glue/sst2", "glue/rte", "glue/mrpc", "glue/cola", "boolq", "arc_easy", "openbookqa"]
NO_LOCAL_TRAIN = {"boolq"}  # its train split is hub-only here: carve train/eval from the dev file


def splits(task: str, n_train: int, n_eval: int, seed: int):
    from prefheads import tasks

    if task in NO_LOCAL_TRAIN:
        ex = tasks.load_examples(task, split="eval", data_dir=DATA, shuffle=True, seed=seed)
        return list(ex[n_eval: n_eval + n_train]), list(ex[:n_eval]), "dev (carved)"
    tr = tasks.load_examples(task, split="train", data_dir=DATA, limit=n_train, shuffle=True, seed=seed)
    ev = tasks.load_examples(task, split="eval", data_dir=DATA, limit=n_eval, shuffle=True, seed=seed)
    return list(tr), list(ev), "train / eval"


def predict(table_scores: list[list[float]]) -> list[int]:
    from prefheads.metrics import choose

    return choose(table_scores)[0]


def dist(preds: list[int], k: int) -> str:
    c = np.bincount(preds, minlength=k)
    return "/".join(str(int(x)) for x in c)


BASELINES = ["logprob", "lmeval_acc", "lmeval_acc_norm", "lmeval_mean"]
HEADS = ["dph_last", "dph_auto", "dph_mix", "logreg"]


def lmeval_columns(pm, task: str, ev: list, labels: list[int], k: int) -> dict:
    """The harness-exact log-prob accuracies on the rows ``ev`` (empty if the harness lacks the task)."""
    from prefheads.evaluation import LMEVAL_PREFIX, lmeval_tables
    from prefheads.metrics import accuracy

    # ev are eval-split rows (a seeded subset, or BoolQ's carved share): matched in the whole split by id
    tables, info = lmeval_tables(pm, task, ev, data_dir=DATA)
    if not info["available"]:
        return {}
    out = {"lmeval_s": info["seconds"]}
    for m, t in tables.items():
        key, p = m.replace(LMEVAL_PREFIX, "lmeval_"), predict(t)
        out[key], out[key + "_pred"] = accuracy(p, labels), dist(p, k)
    return out


def run_task(pm, task: str, args) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from prefheads.layers import parse_layers
    from prefheads.metrics import accuracy
    from prefheads.training import FitConfig, fit
    from prefheads.training.cache import FeatureCache, cached_features
    from prefheads.training.data import from_examples

    t0 = time.perf_counter()
    tr, ev, how = splits(task, args.n_train, args.n_eval, args.seed)
    k = max(len(e.choices) for e in ev)  # ARC has a few 3- and 5-choice questions
    cands = from_examples(tr)
    layers = parse_layers("all", pm.num_layers)
    cache = FeatureCache(args.cache)
    if args.baselines_only:
        train_states, layers = None, [-1]
    else:
        train_states = cached_features(pm, cands.prompts, cands.completions, layers, cache)[0].states
    t_feat = time.perf_counter() - t0
    prompts = [e.prompt for e in ev for _ in e.choices]
    comps = [c for e in ev for c in e.choices]
    t1 = time.perf_counter()
    ev_feats = pm.features(prompts, comps, layers=layers, logprobs=True)
    t_eval_feat = time.perf_counter() - t1
    labels = [e.label for e in ev]

    offsets = np.cumsum([0] + [len(e.choices) for e in ev]).tolist()

    def per_example(flat: list[float]) -> list[list[float]]:
        return [flat[offsets[i]:offsets[i + 1]] for i in range(len(ev))]

    out = {"task": task, "splits": how, "n_train": len(tr), "n_eval": len(ev), "choices": k}
    mean_lp = (ev_feats.logprob_sum / ev_feats.n_tokens.clamp_min(1)).tolist()
    p = predict(per_example(mean_lp))
    out["logprob"], out["logprob_pred"] = accuracy(p, labels), dist(p, k)
    out.update(lmeval_columns(pm, task, ev, labels, k))
    out["baseline"] = max(out[m] for m in BASELINES if m in out)
    out["baseline_method"] = max((m for m in BASELINES if m in out), key=lambda m: out[m])
    if args.baselines_only:
        out["gold"], out["wall_s"] = dist(labels, k), time.perf_counter() - t0
        return out

    base = dict(task=task, data_dir=str(DATA), epochs=args.epochs, batch_size=16, seed=args.seed, cache_dir=args.cache)
    heads = {
        "dph_last": FitConfig(out=str(Path(args.tmp) / task / "last"), pooler="swiglu", **base),
        "dph_auto": FitConfig(out=str(Path(args.tmp) / task / "auto"), pooler="swiglu", layer="auto", layers="all", **base),
        "dph_mix": FitConfig(out=str(Path(args.tmp) / task / "mix"), pooler="layermix", layers="all",
                             layermix_inner="swiglu", **base),
    }
    for key, cfg in heads.items():
        t2 = time.perf_counter()
        cfg.head_name = key
        fit(cfg, pm=pm, progress=False, cands=cands)
        with torch.no_grad():
            pm.heads[key].eval()
            r = pm(ev_feats.states, key).tolist()
        p = predict(per_example(r))
        out[key], out[key + "_pred"], out[key + "_s"] = accuracy(p, labels), dist(p, k), time.perf_counter() - t2
        if key == "dph_auto":
            out["auto_layer"] = pm.heads[key].config.layer
        pm.remove_head(key)

    # logistic regression on the same cached last-layer features: P(candidate is correct)
    t3 = time.perf_counter()
    X = train_states[-1].numpy()
    y = np.zeros(len(X))
    for w, _ in cands.groups:
        y[w] = 1
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    clf.fit(X, y)
    prob = clf.predict_proba(ev_feats.states[-1].numpy())[:, 1].tolist()
    p = predict(per_example(prob))
    out["logreg"], out["logreg_pred"], out["logreg_s"] = accuracy(p, labels), dist(p, k), time.perf_counter() - t3
    out["gold"] = dist(labels, k)
    out["features_s"], out["eval_features_s"] = t_feat, t_eval_feat
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None, help="backbone: hub id, folder, .gguf, or gemma3-270m "
                    "(default: bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="feature cache folder (default: $PREFHEADS_CACHE/features)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--baselines-only", action="store_true", help="log-prob columns only (no heads)")
    args = ap.parse_args()
    args.tmp = tempfile.mkdtemp()

    from prefheads import PreferenceModel

    pm = PreferenceModel.from_pretrained(resolve_bench_base(args.base))
    rows = []
    for task in args.tasks.split(","):
        rows.append(run_task(pm, task, args))
        print(json.dumps(rows[-1]), flush=True)
    print(machine(), pm.model_id)
    heads = [] if args.baselines_only else HEADS
    for r in rows:
        if heads:
            r["best_head_vs_baseline"] = max(r[h] for h in heads) - r["baseline"]
    pct = [{**r, **{k: 100 * r[k] for k in BASELINES + heads + ["baseline", "best_head_vs_baseline"] if k in r}}
           for r in rows]
    print(table(pct, ["task", "splits", "n_train", "n_eval", *BASELINES, "baseline_method", *heads,
                      *(["auto_layer", "best_head_vs_baseline"] if heads else []), "wall_s"]))
    print(table(rows, ["task", "gold", *[m + "_pred" for m in BASELINES + heads]]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
