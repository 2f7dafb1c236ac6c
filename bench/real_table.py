"""The real-data result table: frozen heads on SmolLM2 (or another base) vs log-prob scoring.

For each task, on the same seeded train/eval splits of the real copies in ../shared/data, in the
template family ``prefheads fit`` uses by default for the task (lm-eval where the task has it):
``default`` is the head ``prefheads fit`` trains with its defaults (nothing set but the task and
the seed), with the paired 95 % bootstrap interval of its margin over the strongest log-prob rule
and McNemar's p. Optional columns (``--heads``): a paper-style SwiGLU DPH head at the last layer, at
the layer chosen on a validation split carved from the training data (``--layer auto``), a
layer-mix head over every layer, and a scikit-learn logistic-regression probe on the same cached
last-layer features. Every method's predicted-answer distribution is printed, since a method
that always answers "yes" can look fine by accuracy alone. One backbone pass per split serves
every head (all layers captured at once).

Log-prob is reported in the chat turn under both template families (mean and sum over the answer
tokens: ``logprob``/``logprob_sum`` in the table's template, ``paper:*`` in the paper's) and with
lm-evaluation-harness's own prompt scored exactly as the harness does (``acc``, ``acc_norm``,
``mean``; tasks the harness defines), on the same rows. ``baseline`` is the strongest of them on
the eval rows themselves (a bar set after the fact, so higher than any rule chosen beforehand):
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


def splits(task: str, n_train: int, n_eval: int, seed: int, variant: str = "paper"):
    from prefheads import tasks

    kw = {"data_dir": DATA, "shuffle": True, "seed": seed, "variant": variant}
    if task in NO_LOCAL_TRAIN:
        ex = tasks.load_examples(task, split="eval", **kw)
        return list(ex[n_eval: n_eval + n_train]), list(ex[:n_eval]), "dev (carved)"
    tr = tasks.load_examples(task, split="train", limit=n_train, **kw)
    ev = tasks.load_examples(task, split="eval", limit=n_eval, **kw)
    return list(tr), list(ev), "train / eval"


def predict(table_scores: list[list[float]]) -> list[int]:
    from prefheads.eval.metrics import choose

    return choose(table_scores)[0]


def dist(preds: list[int], k: int) -> str:
    c = np.bincount(preds, minlength=k)
    return "/".join(str(int(x)) for x in c)


BASELINES = ["logprob", "logprob_sum", "paper:logprob", "paper:logprob_sum", "lmeval_acc", "lmeval_acc_norm",
             "lmeval_mean"]
HEADS = ["default", "dph_last", "dph_auto", "dph_mix", "logreg"]


def lmeval_columns(pm, task: str, ev: list, labels: list[int], k: int) -> dict:
    """The harness-exact log-prob accuracies on the rows ``ev`` (empty if the harness lacks the task)."""
    from prefheads.eval import LMEVAL_PREFIX, lmeval_tables
    from prefheads.eval.metrics import accuracy

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

    from prefheads.hooks import parse_layers
    from prefheads.lmscores import chars_of, score_table
    from prefheads.eval.margins import accuracy_margin
    from prefheads.eval.metrics import accuracy
    from prefheads.training import FitConfig, fit
    from prefheads.training.cache import FeatureCache, cached_features
    from prefheads.training.config import default_template
    from prefheads.training.data import from_examples
    from prefheads.training.passes import raw_features

    t0 = time.perf_counter()
    template = default_template(task)
    tr, ev, how = splits(task, args.n_train, args.n_eval, args.seed, template)
    k = max(len(e.choices) for e in ev)  # ARC has a few 3- and 5-choice questions
    cands, ecands = from_examples(tr), from_examples(ev)
    heads = [] if args.baselines_only else args.heads.split(",")
    cache = FeatureCache(args.cache)
    labels = [e.label for e in ev]
    offsets = np.cumsum([0] + [len(e.choices) for e in ev]).tolist()

    def per_example(flat: list[float]) -> list[list[float]]:
        return [flat[offsets[i]:offsets[i + 1]] for i in range(len(ev))]

    out = {"task": task, "template": template, "splits": how, "n_train": len(tr), "n_eval": len(ev), "choices": k}
    tables: dict[str, list[list[float]]] = {}

    def column(key: str, table_: list[list[float]]) -> None:
        p = predict(table_)
        tables[key], out[key], out[key + "_pred"] = table_, accuracy(p, labels), dist(p, k)

    # the default head: prefheads fit with its defaults, on these training rows
    feats_layers = [-1]
    if "default" in heads:
        t2 = time.perf_counter()
        cfg = FitConfig(task=task, out=str(Path(args.tmp) / task / "default"), seed=args.seed, cache_dir=args.cache,
                        head_name="default")
        res = fit(cfg, pm=pm, progress=False, cands=cands)
        h = pm.heads["default"]
        feats_layers = sorted({h.config.layer, -1})
        out["default_fit_s"], out["default_layer"] = round(time.perf_counter() - t2, 1), h.config.meta.get("chosen_layer")
        out["default_lm_score"] = h.config.score_input
        out["default_kept"] = h.config.meta.get("lm_score", {}).get("kept")
        out["default_cv"] = round(res.best["val_accuracy"], 4)
    fev, _ = cached_features(pm, ecands.prompts, ecands.completions, feats_layers, cache, logprobs=True)
    column("logprob", per_example((fev.logprob_sum / fev.n_tokens.clamp_min(1)).tolist()))
    column("logprob_sum", per_example(fev.logprob_sum.tolist()))
    if template != "paper":  # the same rows in the paper's template, in the chat turn
        _, pev, _ = splits(task, args.n_train, args.n_eval, args.seed, "paper")
        assert [e.id for e in pev] == [e.id for e in ev]
        pc = from_examples(pev)
        pf = pm.features(pc.prompts, pc.completions, layers=[-1], logprobs=True)
        column("paper:logprob", per_example((pf.logprob_sum / pf.n_tokens.clamp_min(1)).tolist()))
        column("paper:logprob_sum", per_example(pf.logprob_sum.tolist()))
    from prefheads.eval import LMEVAL_PREFIX, lmeval_tables

    lm_tables, info = lmeval_tables(pm, task, ev, variant=template, data_dir=DATA)
    if info["available"]:
        for m, t in lm_tables.items():
            column(m.replace(LMEVAL_PREFIX, "lmeval_"), t)
    out["baseline"] = max(out[m] for m in BASELINES if m in out)
    out["baseline_method"] = max((m for m in BASELINES if m in out), key=lambda m: out[m])
    if "default" in heads:
        h = pm.heads["default"]
        with torch.no_grad():
            h.eval()
            if h.uses_raw_view:  # the eval rows' raw-view log-probs (cached, as the training rows')
                rf, _ = raw_features(cfg, pm, ecands)
                fev.raw_logprob_sum, fev.raw_n_tokens = rf.logprob_sum, rf.n_tokens
            s = score_table(h.config.score_input, fev, chars_of(ecands.completions)) if h.uses_scores else None
            column("default", per_example(h(h.select(fev.states), s).tolist()))
        m = accuracy_margin(tables["default"], tables[out["baseline_method"]], labels, seed=args.seed)
        out["default_vs_baseline"], out["default_ci"], out["default_p"] = m["vs_baseline"], m["vs_baseline_ci"], m["vs_baseline_p"]
        pm.remove_head("default")
    out["gold"], out["wall_s"] = dist(labels, k), round(time.perf_counter() - t0, 1)
    others = [x for x in heads if x != "default"]
    if not others:
        return out

    # the paper-style heads, on all layers of the same training rows
    layers = parse_layers("all", pm.num_layers)
    train_states = cached_features(pm, cands.prompts, cands.completions, layers, cache)[0].states
    ev_states = pm.features(ecands.prompts, ecands.completions, layers=layers).states
    base = dict(task=task, data_dir=str(DATA), epochs=args.epochs, batch_size=16, seed=args.seed, cache_dir=args.cache,
                lm_score="none", objective="separable", template=template)
    cfgs = {
        "dph_last": dict(pooler="swiglu", layer="-1"),
        "dph_auto": dict(pooler="swiglu", layer="auto", layers="all"),
        "dph_mix": dict(pooler="layermix", layers="all", layermix_inner="swiglu"),
    }
    for key in [x for x in others if x in cfgs]:
        t2 = time.perf_counter()
        fit(FitConfig(out=str(Path(args.tmp) / task / key), head_name=key, **base, **cfgs[key]), pm=pm,
            progress=False, cands=cands)
        with torch.no_grad():
            pm.heads[key].eval()
            column(key, per_example(pm(ev_states, key).tolist()))
        out[key + "_s"] = time.perf_counter() - t2
        if key == "dph_auto":
            out["auto_layer"] = pm.heads[key].config.layer
        pm.remove_head(key)
    if "logreg" in others:  # logistic regression on the cached last-layer features: P(candidate is correct)
        X = train_states[-1].numpy()
        y = np.zeros(len(X))
        for w, _ in cands.groups:
            y[w] = 1
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        clf.fit(X, y)
        column("logreg", per_example(clf.predict_proba(ev_states[-1].numpy())[:, 1].tolist()))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
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
    ap.add_argument("--heads", default="default", help=f"head columns, comma-separated, of {HEADS}")
    args = ap.parse_args()
    args.tmp = tempfile.mkdtemp()

    from prefheads import PreferenceModel

    pm = PreferenceModel.from_pretrained(resolve_bench_base(args.base))
    rows = []
    for task in args.tasks.split(","):
        rows.append(run_task(pm, task, args))
        print(json.dumps(rows[-1]), flush=True)
    print(machine(), pm.model_id)
    heads = [] if args.baselines_only else args.heads.split(",")
    for r in rows:
        if heads:
            r["best_head_vs_baseline"] = max(r[h] for h in heads) - r["baseline"]
        if "default_ci" in r:
            lo, hi = r["default_ci"]
            r["default_margin"] = f"{100 * r['default_vs_baseline']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    pct = [{**r, **{k: round(100 * r[k], 1) for k in BASELINES + heads + ["baseline", "best_head_vs_baseline"] if k in r}}
           for r in rows]
    print(table(pct, ["task", "template", "splits", "n_train", "n_eval", *BASELINES, "baseline_method", *heads,
                      *(["default_margin", "default_layer", "default_lm_score", "default_fit_s"] if "default" in heads else []),
                      *(["auto_layer"] if "dph_auto" in heads else []), "wall_s"]))
    print(table(rows, ["task", "gold", *[m + "_pred" for m in BASELINES + heads]]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
