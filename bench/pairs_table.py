"""The default reward head on real Anthropic HH-RLHF preference pairs (helpful-base + harmless-base).

What it measures: how well the head ``prefheads fit`` trains with its defaults (nothing set but the
data file, the output folder, the seed and the cache) ranks the chosen reply above the rejected one
on real HH-RLHF pairs it has not seen, against the LM's own log-prob scores and the length-only rule.

* Data: the local test files of the two HH-RLHF "base" subsets (``hh-rlhf/helpful-base`` and
  ``hh-rlhf/harmless-base`` under ``$PREFHEADS_DATA`` / ../shared/data), read with the package's
  loader (``tasks.load_pairs("hh_rlhf", "eval")`` reads all four subsets; the two online /
  rejection-sampled ones are dropped by ``meta["source"]``). Optionally only pairs whose prompt
  text plus longer reply is at most ``--max-chars`` characters (backbone time grows with length).
  A seeded shuffle, then the first ``--n-eval`` pairs are the eval split and the next
  ``--n-train`` the training split (disjoint). Both splits' pair ids (``<subset>/<row>``) are
  hashed (sha256) into the JSON, with the first and last few, so a split can be checked.
* Training: both splits are written as ``{"prompt": [messages], "chosen", "rejected"}`` JSONL and
  the head is fitted exactly as a user would, ``fit(FitConfig(data=train.jsonl, out=..., seed=...,
  cache_dir=...), pm=pm)``. Note that a frozen fit caps its data to what its backbone pass covers
  in ``time_budget`` (30 min by default): ``n_fit`` is what it actually trained on.
* Evaluation: ``prefheads.eval.evaluate.evaluate_task`` on the generic task
  ``pairs:<eval.jsonl>``: per method the pair accuracy (a tie is a miss), the length-only baseline
  ``length``, every method's accuracy on the similar-length pairs (replies within 20 % of the
  longer one's characters), the strongest method without a head (``baseline``) and the head's
  margin over it with a paired 95 % bootstrap interval and McNemar's p. The summed log-prob is
  computed in the same backbone pass but ``evaluate_task`` does not report it; this script adds it
  as an extra method (``logprob_sum``) so it is measured, and competes for ``baseline``, like the
  others. The head's margins over mean log-prob (``logprob``, the chat-turn reply's mean token
  log-prob) and over ``length`` are computed here with the package's ``paired_interval`` /
  ``mcnemar_p`` on the same per-pair correctness, for all pairs and for the similar-length ones.

Columns (percent): ``default`` (the head), ``logprob`` (mean log-prob), ``logprob_sum``,
``length``, ``raw_mean`` / ``raw_sum`` (the reply's log-prob after the prompt's plain text, no chat
template: the raw view a default head may also read, so a baseline too), ``vs_logprob`` /
``vs_length`` (the head's margin with its 95 % interval) and their McNemar ``p``, and
``vs_strongest_rule`` (the margin over the strongest of the four log-prob rules on all pairs). Then the head's record (chosen layer, LM score kept, cross-validated accuracy),
``fit_s`` (short when ``fit_cache_hit``: the training features came from the ``--cache`` folder),
``eval_s`` (the eval pass is never cached), ``wall_s`` (model loading included) and the machine.

With ``--lora`` two more heads are measured on the same eval pairs: ``probe``, a frozen
last-layer head with no LM score (``layer=-1, lm_score="none"``: the pure DPH reader, fitted from
the cached features) and ``lora``, LoRA (rank 8) started from that probe (``--init-head``, linear
probing then fine-tuning) for one epoch at lr 1e-4 (head and adapters), 30 % warmup, batch 8, on
the same training pairs (10 % carved for validation). The LoRA backbone is scored in a second
pass; a table gives each head's accuracy and margins over ``logprob`` and ``length``, all and
similar-length pairs, and ``lora_fit_s`` its training time.

Run (from the repository root)::

    .venv/bin/python bench/pairs_table.py --n-train 2000 --n-eval 1200 --json pairs.json
    .venv/bin/python bench/pairs_table.py --n-train 40 --n-eval 30 --cache /tmp/pairs_cache   # smoke run
    .venv/bin/python bench/pairs_table.py --n-train 1000 --n-eval 1000 --max-chars 800 --lora   # + LoRA (≈ 75 min more)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, resolve_bench_base, table  # noqa: E402

SUBSETS = ("helpful-base", "harmless-base")
HEAD = "default"
SUM = "logprob_sum"
SHOW = 3  # first / last ids recorded per split
PROBE, LORA = "probe", "lora"  # the --lora heads


def subset_of(pair: Any) -> str:
    """The HH-RLHF subset a pair came from: the folder of its source file."""
    return Path(pair.meta["source"]).parent.name


def pair_id(pair: Any) -> str:
    return f"{subset_of(pair)}/{pair.meta['row']}"


def prompt_chars(pair: Any) -> int:
    return sum(len(m["content"]) for m in pair.prompt)


def load_splits(args: argparse.Namespace) -> tuple[list, list, dict[str, Any]]:
    """The eval and training pairs, and what the data gave (per subset, filter, split ids)."""
    from prefheads import tasks

    every = tasks.load_pairs("hh_rlhf", split="eval", data_dir=DATA)
    kept = [p for p in every if subset_of(p) in SUBSETS]
    found = Counter(subset_of(p) for p in kept)
    missing = [s for s in SUBSETS if not found[s]]
    if missing:
        raise SystemExit(f"no pairs from {missing} in {DATA}/hh-rlhf")
    if args.max_chars:
        kept = [p for p in kept if prompt_chars(p) + max(len(p.chosen), len(p.rejected)) <= args.max_chars]
    short = Counter(subset_of(p) for p in kept)
    need = args.n_eval + args.n_train
    if len(kept) < need:
        raise SystemExit(f"{need} pairs needed (--n-eval + --n-train), {len(kept)} left after --max-chars "
                         f"{args.max_chars}")
    random.Random(args.seed).shuffle(kept)
    ev, tr = kept[:args.n_eval], kept[args.n_eval:need]
    ids = {name: [pair_id(p) for p in part] for name, part in (("eval", ev), ("train", tr))}
    assert not set(ids["eval"]) & set(ids["train"]), "eval and training pairs overlap"
    info = {
        "loaded_all_subsets": len(every), "dropped_by_loader": every.dropped, "skipped_by_loader": every.skipped,
        "per_subset": {s: found[s] for s in SUBSETS}, "per_subset_after_max_chars": {s: short[s] for s in SUBSETS},
        "per_subset_in_splits": {name: dict(Counter(subset_of(p) for p in part))
                                 for name, part in (("eval", ev), ("train", tr))},
        "splits": {name: {"n": len(v), "sha256": hashlib.sha256("\n".join(v).encode()).hexdigest(),
                          "first": v[:SHOW], "last": v[-SHOW:]} for name, v in ids.items()},
    }
    return ev, tr, info


def write_jsonl(path: Path, pairs: list) -> Path:
    with path.open("w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    return path


@contextlib.contextmanager
def with_summed_logprob() -> Iterator[None]:
    """Have ``evaluate_task`` also measure the summed log-prob it computes but does not report.

    ``score_examples`` fills ``ChoiceScores.logprob_sum`` from the same backbone pass, while
    ``ChoiceScores.methods()`` lists only the mean; the scores are passed on as an extra method.
    """
    ev = importlib.import_module("prefheads.eval.evaluate")  # the module (prefheads.eval.evaluate is also a function)
    original = ev.score_examples

    def scored(*a: Any, **kw: Any) -> Any:
        out = original(*a, **kw)
        if out.logprob_sum:
            out.extra[SUM] = out.logprob_sum
        return out

    ev.score_examples = scored
    try:
        yield
    finally:
        ev.score_examples = original


def margin(head: np.ndarray, base: np.ndarray, seed: int) -> dict[str, Any]:
    """The head's accuracy minus a baseline's on the same pairs (per-pair 0/1), interval and McNemar p."""
    from prefheads.eval.margins import N_RESAMPLES, mcnemar_p, paired_interval

    if not len(head):
        return {"vs": None, "ci": None, "p": None}
    return {"vs": float(head.mean() - base.mean()),
            "ci": paired_interval(head.astype(float), base.astype(float), len(head), n_resamples=N_RESAMPLES, seed=seed),
            "p": mcnemar_p(head, base)}


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def margin_text(m: dict[str, Any]) -> str:
    if m["vs"] is None:
        return ""
    lo, hi = m["ci"]
    return f"{100 * m['vs']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def lm_score_text(meta: dict[str, Any]) -> str:
    sel = meta.get("lm_score")
    if not isinstance(sel, dict):
        return str(sel)
    kept, score = sel.get("kept"), sel.get("score")
    if kept == "scores":
        return "scores alone: " + "+".join(sel.get("combined") or [])
    if kept == "score":
        return f"{score} alone"
    if kept == "head":
        return "head + " + ("+".join(sel["combined"]) if sel.get("combined") else str(score))
    return f"{kept} (best score tried: {score})"


def pair_correct(records: list[dict[str, Any]], method: str) -> np.ndarray:
    """Per pair: the chosen reply (first) scored strictly above the rejected one, as the package counts."""
    return np.array([r["scores"][method][0] > r["scores"][method][1] for r in records])


def fit_lora(args: argparse.Namespace, train_file: Path, eval_file: Path, tmp: Path, n_eval: int,
             extra: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """LoRA started from the frozen probe in ``tmp/probe``, fitted on ``train_file`` and scored on
    ``eval_file`` with its own backbone; returns per-pair correctness and ``extra`` with timings."""
    from prefheads import PreferenceModel
    from prefheads.eval.evaluate import evaluate_task, heads_template
    from prefheads.eval.scores import method_name
    from prefheads.training import FitConfig, fit

    cfg = FitConfig(data=str(train_file), out=str(tmp / LORA), head_name=LORA, mode="lora",
                    init_head=f"{tmp / PROBE}:{PROBE}", lr=1e-4, head_lr=1e-4, warmup_ratio=0.3, epochs=1,
                    batch_size=8, seed=args.seed)
    pm = PreferenceModel.from_pretrained(resolve_bench_base(args.base))
    t0 = time.perf_counter()
    res = fit(cfg, pm=pm, progress=False)
    extra = {**extra, "lora_fit_s": round(time.perf_counter() - t0, 1), "lora_history": res.history,
             "lora_config": cfg.to_dict()}
    t0 = time.perf_counter()
    _, records = evaluate_task(pm, f"pairs:{eval_file}", seed=args.seed, heads=[LORA],
                               variant=heads_template(pm, [LORA]), lm_eval_baseline=False)
    extra["lora_eval_s"] = round(time.perf_counter() - t0, 1)
    if len(records) != n_eval:
        raise SystemExit(f"the LoRA evaluation scored {len(records)} of the {n_eval} eval pairs")
    return pair_correct(records, method_name(LORA)), extra


def head_rows(heads: list[str], correct: dict[str, np.ndarray], similar: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """Each head's accuracy and margins over mean log-prob and length, all pairs and similar-length ones."""
    rows = []
    for h in heads:
        for label, mask in (("all", np.ones(len(similar), bool)), ("similar length", similar)):
            if not mask.any():
                continue
            rows.append({"head": h, "pairs": label, "n": int(mask.sum()), "accuracy": pct(float(correct[h][mask].mean())),
                         **{f"vs_{k}": margin_text(margin(correct[h][mask], correct[k][mask], seed))
                            for k in ("logprob", "length")}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="backbone: hub id, folder, .gguf, or gemma3-270m "
                    "(default: bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--n-train", type=int, default=2000, help="training pairs")
    ap.add_argument("--n-eval", type=int, default=1200, help="eval pairs")
    ap.add_argument("--max-chars", type=int, default=1400,
                    help="keep pairs whose prompt text + longer reply is at most this many characters (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle, the fit and the bootstrap")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: $PREFHEADS_CACHE/features)")
    ap.add_argument("--lora", action="store_true", help="also measure a frozen last-layer probe and LoRA started "
                    "from it (one epoch)")
    ap.add_argument("--json", default=None, help="also write everything here")
    args = ap.parse_args()
    t_start = time.perf_counter()

    from prefheads import PreferenceModel
    from prefheads.eval.evaluate import evaluate_task, heads_template
    from prefheads.eval.margins import LENGTH, SIMILAR_KEY, similar_length
    from prefheads.eval.scores import LOGPROB, method_name
    from prefheads.headio import read_config
    from prefheads.training import FitConfig, fit

    ev_pairs, tr_pairs, data_info = load_splits(args)
    print(f"HH-RLHF test pairs, all four subsets: {data_info['loaded_all_subsets']} "
          f"({data_info['dropped_by_loader']} dropped by the loader)")
    for s in SUBSETS:
        print(f"  {s}: {data_info['per_subset'][s]} pairs, {data_info['per_subset_after_max_chars'][s]} within "
              f"--max-chars {args.max_chars or 'off'}; eval {data_info['per_subset_in_splits']['eval'].get(s, 0)}, "
              f"train {data_info['per_subset_in_splits']['train'].get(s, 0)}")
    for name, sp in data_info["splits"].items():
        print(f"  {name}: {sp['n']} pairs, ids sha256 {sp['sha256'][:16]}, first {sp['first']}")

    tmp = Path(tempfile.mkdtemp(prefix="pairs_table_"))
    train_file, eval_file = write_jsonl(tmp / "train.jsonl", tr_pairs), write_jsonl(tmp / "eval.jsonl", ev_pairs)
    pm = PreferenceModel.from_pretrained(resolve_bench_base(args.base))

    # the default head, fitted as a user would (the defaults are the product's recipe)
    cfg = FitConfig(data=str(train_file), out=str(tmp / "head"), seed=args.seed, cache_dir=args.cache)
    t0 = time.perf_counter()
    res = fit(cfg, pm=pm, progress=False)
    fit_s = time.perf_counter() - t0
    head_name = res.head_name
    entry = read_config(res.out)["heads"][head_name]
    meta = entry["config"]["meta"]

    extra: dict[str, Any] = {}
    if args.lora:  # the pure last-layer reader, from the features the default fit cached
        probe_cfg = FitConfig(data=str(train_file), out=str(tmp / PROBE), head_name=PROBE, layer=-1, lm_score="none",
                              seed=args.seed, cache_dir=args.cache)
        t0 = time.perf_counter()
        fit(probe_cfg, pm=pm, progress=False)
        extra["probe_fit_s"] = round(time.perf_counter() - t0, 1)
    heads = [head_name] + ([PROBE] if args.lora else [])

    # the package's evaluation of the generic pairs task on the eval file
    t0 = time.perf_counter()
    with with_summed_logprob():
        result, records = evaluate_task(pm, f"pairs:{eval_file}", seed=args.seed, heads=heads,
                                        variant=heads_template(pm, heads), lm_eval_baseline=False)
    eval_s = time.perf_counter() - t0
    if len(records) != len(ev_pairs):
        raise SystemExit(f"evaluate_task scored {len(records)} of the {len(ev_pairs)} eval pairs")
    rows_read = [int(r["id"].rsplit(":", 1)[1]) for r in records]
    assert rows_read == sorted(rows_read), "eval records are not in file order"

    # per-pair correctness (chosen strictly above rejected, as the package counts pairs)
    hm = method_name(head_name)
    methods = {HEAD: hm, "logprob": LOGPROB, "logprob_sum": SUM, "length": LENGTH}
    if args.lora:
        methods[PROBE] = method_name(PROBE)
    correct = {k: pair_correct(records, m) for k, m in methods.items()}
    if args.lora:
        correct[LORA], extra = fit_lora(args, train_file, eval_file, tmp, len(ev_pairs), extra)
    blocks = result["methods"]
    for k, m in methods.items():  # the same numbers as the package's
        assert abs(correct[k].mean() - blocks[m]["metrics"]["pair_accuracy"]) < 1e-9, (k, m)
    # the raw view's log-prob rules too (the prompt's plain text, no chat template): the head may add
    # these scores, so they are baselines as well (one log-prob-only pass over the eval pairs)
    from prefheads.rawtext import raw_logprobs

    t0 = time.perf_counter()
    prompts = [p.prompt for p in ev_pairs for _ in (0, 1)]
    with pm.reading(None):
        lp, nt = raw_logprobs(pm.backbone, pm.profile, pm.tokenizer, prompts,
                              [x for p in ev_pairs for x in (p.chosen, p.rejected)], max_length=pm.max_length,
                              max_tokens=pm.max_tokens, truncation=pm.truncation)
    raw_s = time.perf_counter() - t0
    for k, v in (("raw_mean", lp / nt.clamp_min(1)), ("raw_sum", lp)):
        v = v.double().view(-1, 2)
        correct[k] = (v[:, 0] > v[:, 1]).numpy()
    rules = ["logprob", "logprob_sum", "raw_mean", "raw_sum"]
    strongest = max(rules, key=lambda k: (correct[k].mean(), -rules.index(k)))
    lengths = np.asarray([r["scores"][LENGTH] for r in records])  # reply characters, as the package counts them
    similar = similar_length(lengths[:, 0], lengths[:, 1])
    assert int(similar.sum()) == result["similar_length"]["n"]
    rows = []
    for label, mask in (("all", np.ones(len(records), bool)), ("similar length", similar)):
        row: dict[str, Any] = {"pairs": label, "n": int(mask.sum())}
        for k in correct:
            row[k] = float(correct[k][mask].mean()) if mask.any() else None
        for k in ("logprob", "length", strongest):
            m = margin(correct[HEAD][mask], correct[k][mask], args.seed)
            row[f"vs_{k}"], row[f"vs_{k}_ci"], row[f"vs_{k}_p"] = m["vs"], m["ci"], m["p"]
            row[f"vs_{k}_text"] = margin_text(m)
        row["vs_strongest_text"] = f"{row[f'vs_{strongest}_text']} ({strongest})"
        rows.append(row)
    if similar.any():  # the package's own similar-length accuracy agrees
        for k, m in methods.items():
            assert abs(rows[1][k] - blocks[m]["metrics"][SIMILAR_KEY]) < 1e-9, (k, m)

    base = result["baseline"]
    hb = blocks[hm]
    wall_s = time.perf_counter() - t_start
    summary = {
        "head": head_name, "chosen_layer": meta.get("chosen_layer"), "lm_score": lm_score_text(meta),
        "solver": meta.get("solver"), "cv_accuracy": pct(meta.get("val_accuracy")), "n_fit": meta.get("n_train"),
        "baseline": f"{base['method']} {pct(base['score'])}",
        "vs_baseline": (margin_text({"vs": hb["vs_baseline"], "ci": hb["vs_baseline_ci"]}) if "vs_baseline_ci" in hb
                        else f"{100 * hb['vs_baseline']:+.1f}"),
        "p": f"{hb['vs_baseline_p']:.3g}" if hb.get("vs_baseline_p") is not None else "",
        "fit_cache_hit": res.cache_hit, "fit_s": round(fit_s, 1), "eval_s": round(eval_s, 1),
        "raw_view_s": round(raw_s, 1), "wall_s": round(wall_s, 1),
    }

    print()
    print(f"HH-RLHF helpful-base + harmless-base, {len(tr_pairs)} train / {len(ev_pairs)} eval pairs, "
          f"seed {args.seed}, max-chars {args.max_chars or 'off'}, {pm.model_id}; pair accuracy in %, "
          f"similar length = replies within {100 * result['similar_length']['tolerance']:.0f} % in characters")
    shown = [{**r, **{k: pct(r[k]) for k in correct}, "vs_logprob": r["vs_logprob_text"],
              "vs_strongest_rule": r["vs_strongest_text"],
              "p (logprob)": "" if r["vs_logprob_p"] is None else f"{r['vs_logprob_p']:.3g}",
              "vs_length": r["vs_length_text"],
              "p (length)": "" if r["vs_length_p"] is None else f"{r['vs_length_p']:.3g}"} for r in rows]
    print(table(shown, ["pairs", "n", *correct, "vs_logprob", "p (logprob)", "vs_length", "p (length)",
                        "vs_strongest_rule"]))
    print()
    print(table([summary], list(summary)))
    if args.lora:
        extra["heads"] = head_rows([HEAD, PROBE, LORA], correct, similar, args.seed)
        print()
        print(table(extra["heads"], ["head", "pairs", "n", "accuracy", "vs_logprob", "vs_length"]))
        print(f"probe fit {extra['probe_fit_s']} s, LoRA fit {extra['lora_fit_s']} s, LoRA eval {extra['lora_eval_s']} s")
    print(machine())

    if args.json:
        out = {"args": vars(args), "machine": machine(), "model": pm.model_id, "data_dir": str(DATA),
               "data": data_info, "rows": rows, "summary": summary,
               "fit": {"seconds": fit_s, "n_train": res.n_train, "n_val": res.n_val, "cache_hit": res.cache_hit,
                       "setup_seconds": res.setup_seconds, "train_seconds": res.train_seconds, "data": res.data,
                       "config": cfg.to_dict(), "head_config": entry["config"], "sha256": entry["sha256"]},
               "eval": {"seconds": eval_s, "result": result}, "extra_heads": extra, "wall_seconds": wall_s}
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
