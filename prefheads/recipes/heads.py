"""Frozen-backbone head recipes: Qwen1.5-style probes (paper Table 6) and task-specific heads (Table 5).

Both train heads with ``fit`` mode ``frozen``: the backbone runs once per training dataset (the
feature cache keeps it, so a re-run or a second head on the same data costs no backbone pass),
and each benchmark is scored once for log-prob and every head together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefheads.recipes.bench import SUBSET_NOTE, evaluate, heads_table, probes_table, tasks_table
from prefheads.recipes.config import TaskSource
from prefheads.recipes.frozen_config import HeadSpec, ProbesRecipe, TaskHeadsRecipe
from prefheads.recipes.data import candidates, check_disjoint, encodable, expand

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


def _say(msg: str) -> None:
    print(msg, flush=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(base: str | None, dtype: str, max_length: int | None) -> PreferenceModel:
    """A :class:`~prefheads.model.PreferenceModel` of ``base`` (CUDA when present)."""
    import torch

    from prefheads.model import PreferenceModel

    kw = {"device_map": "cuda"} if torch.cuda.is_available() else {}
    pm = PreferenceModel.from_pretrained(base, dtype=_dtype(dtype), **kw)
    if max_length:
        pm.max_length = min(max_length, pm.max_length or max_length)
    return pm


def train_head(pm: PreferenceModel, name: str, sources: Sequence[TaskSource], spec: HeadSpec, *, out: Path, seed: int,
               data_dir: str | None, base: str | None, progress: bool = False) -> dict[str, Any]:
    """Fit head ``name`` on ``sources`` (frozen backbone, cached features); returns a summary."""
    from prefheads.training import fit

    template = spec.resolved_template(list(sources))
    cands, counts = candidates(sources, data_dir, seed, keep=encodable(pm), variant=template)
    _say(f"[{name}] training on {len(cands)} examples ({template} template) from {len(counts)} tasks: "
         + ", ".join(f"{t} {n}" for t, n in counts.items()))
    # the recipe's limits say how much data: no time budget on top of them
    fcfg = spec.fit_config(task="mix(" + ",".join(sorted(counts)) + ")", out=str(out), seed=seed,
                           head_name=name, base=base, time_budget=0, template=template)
    res = fit(fcfg, pm=pm, progress=progress, cands=cands)
    best = res.history[res.best_epoch - 1]
    chosen = (f"cross-validated choice accuracy {best['val_accuracy']:.3f}" if fcfg.solver == "ridge" else
              f"best epoch {res.best_epoch}: val pair accuracy {best['val_pair_accuracy']:.3f}")
    _say(f"[{name}] {chosen}; backbone {res.setup_seconds:.0f}s{' (cache hit)' if res.cache_hit else ''}, "
         f"head {res.train_seconds:.0f}s")
    return {"tasks": counts, "n_train": res.n_train, "n_val": res.n_val, "solver": fcfg.solver, "template": template,
            "best_epoch": res.best_epoch, "val_pair_accuracy": best["val_pair_accuracy"],
            "setup_seconds": res.setup_seconds, "train_seconds": res.train_seconds, "cache_hit": res.cache_hit}


def probes(cfg: ProbesRecipe, progress: bool = False) -> dict[str, Any]:
    """For each model: a head on the frozen backbone, then log-prob vs DPH on every benchmark.

    Writes ``<out>/<model>/`` (head folder, ``results.json``; with ``per_task`` one head folder per
    task inside it), ``<out>/results.json`` and ``<out>/table.md`` (paper Table 6 layout, then
    per-task metrics per model). A training mix sharing rows with a benchmark is refused first.
    """
    import gc

    root = Path(cfg.out)
    check_disjoint({"train": cfg.train}, cfg.eval, cfg.data_dir, cfg.seed)
    rows, out = [], {}
    for base in cfg.models:
        label = base or "SmolLM2-135M-Instruct (bundled)"
        d = root / _slug(base or "smollm2-135m-instruct")
        pm = load_model(base, cfg.dtype, cfg.max_length)
        route: dict[str, str] | None = None
        if cfg.per_task:
            by_task: dict[str, list[TaskSource]] = {}
            for src in expand(cfg.train):
                by_task.setdefault(src.task, []).append(src)
            route = {t: f"{cfg.head_name}-{_slug(t)}" for t in by_task}
            train: dict[str, Any] = {t: train_head(pm, route[t], srcs, cfg.head, out=d / route[t], seed=cfg.seed,
                                                   data_dir=cfg.data_dir, base=base, progress=progress)
                                     for t, srcs in by_task.items()}
        else:
            train = train_head(pm, cfg.head_name, cfg.train, cfg.head, out=d, seed=cfg.seed, data_dir=cfg.data_dir,
                               base=base, progress=progress)
        res = evaluate(pm, cfg.eval, data_dir=cfg.data_dir, seed=cfg.seed, heads=[cfg.head_name], progress=_say,
                       route=route)
        res["train"] = train
        (d / "results.json").write_text(json.dumps(res, indent=2))
        rows.append((label, res))
        out[label] = res
        del pm
        gc.collect()
    text = ["GLUE / GPT4All / RACE scores (×100) of log-prob and DPH prediction.", "",
            probes_table(rows, cfg.head_name, cfg.glue_wnli), SUBSET_NOTE, ""]
    for label, res in rows:
        text += [f"### {label}", "", tasks_table(res)]
    (root / "table.md").write_text("\n".join(text))
    (root / "results.json").write_text(json.dumps(out, indent=2))
    _say(probes_table(rows, cfg.head_name, cfg.glue_wnli))
    return out


def task_heads(cfg: TaskHeadsRecipe, progress: bool = False) -> dict[str, Any]:
    """One head per task group on one frozen backbone, then the heads × benchmarks table.

    Writes ``<out>/runs/<head>/`` (each fit), ``<out>/heads/`` (every head, one folder),
    ``<out>/results.json`` and ``<out>/table.md`` (paper Table 5 layout, then per-task metrics).
    """
    root = Path(cfg.out)
    check_disjoint({f"heads.{name}": srcs for name, srcs in cfg.heads.items()}, cfg.eval, cfg.data_dir, cfg.seed)
    pm = load_model(cfg.base, cfg.dtype, cfg.max_length)
    names = pm.load_heads(cfg.base_heads) if cfg.base_heads else []
    train = {}
    for name, sources in cfg.heads.items():
        train[name] = train_head(pm, name, sources, cfg.head, out=root / "runs" / name, seed=cfg.seed,
                                 data_dir=cfg.data_dir, base=cfg.base, progress=progress)
        names.append(name)
    pm.save_heads(root / "heads")
    res = evaluate(pm, cfg.eval, data_dir=cfg.data_dir, seed=cfg.seed, heads=names, progress=_say)
    res["train"] = train
    table = heads_table(res, names, cfg.glue_wnli)
    (root / "table.md").write_text("\n".join(["Benchmark scores (×100) of each head (rows) on each benchmark "
                                              "(columns); log-prob prediction for reference.", "", table,
                                              SUBSET_NOTE, "", tasks_table(res)]))
    (root / "results.json").write_text(json.dumps(res, indent=2))
    _say(table)
    return res
