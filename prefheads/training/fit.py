"""``fit``: train a reward head in one of three modes and save it (the ``prefheads fit`` command)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prefheads.hooks import auto_layers, parse_layers
from prefheads.lmscores import all_scores
from prefheads.poolers import is_multi_layer
from prefheads.training.budget import within_budget
from prefheads.training.checkpoint import cut_metrics, recorded_choices
from prefheads.training.config import FitConfig
from prefheads.training.lmscore import choose_score, settle
from prefheads.training.loop import choice_accuracy
from prefheads.training.data import Candidates, from_examples, from_pairs, prompt_keys, split
from prefheads.training.modes import MODES
from prefheads.training.passes import (backbone_pass, encode_candidates, frozen_features, raw_features, reads_raw_view,
                                       score_values)

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        out: Folder the heads were saved to.
        head_name: Name of the trained head.
        history: One dict per epoch (loss, train/val pair accuracy, margin, seconds).
        best_epoch: Epoch whose weights were kept (by validation pair accuracy).
        n_train: Training examples.
        n_val: Validation examples (carved from the training data).
        setup_seconds: Backbone work before training (features, reference log-probs).
        train_seconds: Time in the training loop.
        cache_hit: Frozen mode: whether the features came from the on-disk cache.
        data: What the data gave and lost: rows, skipped bad rows, dropped rows without a
            preference signal, candidates truncated to the context (and the policy).
    """

    out: Path
    head_name: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_val: int = 0
    setup_seconds: float = 0.0
    train_seconds: float = 0.0
    cache_hit: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, float]:
        """History record of the kept epoch."""
        return self.history[self.best_epoch - 1]


def training_candidates(cfg: FitConfig) -> Candidates:
    """Load the training rows of ``cfg.task`` or ``cfg.data``."""
    from prefheads import tasks

    # a cap takes a seeded random subset, not the first rows of the file
    kw = {"limit": cfg.max_train, "seed": cfg.seed, "shuffle": cfg.max_train is not None, "variant": cfg.template}
    if cfg.data is not None:
        if not Path(cfg.data).is_file():
            raise FileNotFoundError(f"--data {cfg.data}: no such file")
        return from_pairs(tasks.load_pairs("pairs", path=cfg.data, **kw), cfg.data)
    names = tasks.expand(cfg.task, train=True)
    if len(names) > 1:  # a group: the size-aware seeded mix of its members
        return from_pairs(tasks.mix(names, data_dir=cfg.data_dir, seed=cfg.seed, limit=cfg.max_train,
                                    variant=cfg.template), cfg.task)
    if tasks.get_task(names[0]).kind == "pairs":
        return from_pairs(tasks.load_pairs(names[0], split="train", data_dir=cfg.data_dir, **kw), names[0])
    return from_examples(tasks.load_examples(names[0], split="train", data_dir=cfg.data_dir, **kw), names[0])


def _initial_head(pm: PreferenceModel, spec: str, dropout: float) -> Any:
    """The head ``FOLDER[:NAME]`` (weights and standardiser kept), its dropout set to ``dropout``."""
    from prefheads.headio import read_config

    folder, name = (spec, None) if Path(spec).is_dir() else spec.rpartition(":")[::2]
    if not folder or not Path(folder).is_dir():
        raise ValueError(f"--init-head {spec}: no such head folder (give FOLDER or FOLDER:NAME)")
    head = pm.read_head(folder, name or None)
    name = name or next(iter(read_config(folder)["heads"]))
    meta: dict[str, Any] = {"init_head": f"{folder}:{name}"}
    if not isinstance(head.config.score_input, (str, type(None))) or head.uses_raw_view:
        # the training loop computes one chat-turn score: a head of several (or raw-view) scores
        # starts the run from its hidden-state part and standardiser, its score term left out
        from prefheads.heads import RewardHead

        meta["init_head_scores_dropped"] = head.config.score_names
        state = {k: v for k, v in head.state_dict().items() if not k.startswith("score_")}
        head, old = RewardHead(dataclasses.replace(head.config, score_input=None)), head
        head.load_state_dict(state)
        head.to(old.input_mean.device)
    head.config = dataclasses.replace(head.config, dropout=dropout, meta=meta)
    head.dropout.p = dropout
    return head


def fit(cfg: FitConfig, pm: PreferenceModel | None = None, progress: bool = True, cands: Candidates | None = None) -> FitResult:
    """Train a head as configured and save it to ``cfg.out``.

    Args:
        cfg: The run's options.
        pm: An already-loaded :class:`~prefheads.model.PreferenceModel` to reuse (its heads are
            kept; the new head is added). Loaded from ``cfg.base`` when None.
        progress: Show a progress bar.
        cands: Training candidates to use instead of loading ``cfg.task`` / ``cfg.data``.
    """
    from prefheads.model import PreferenceModel
    from prefheads.progress import bar
    from prefheads.training.loop import train
    from prefheads.training.outdir import check_out_dir

    if pm is None:
        from prefheads.loading import quantization_kwargs

        kw = quantization_kwargs(cfg.load_in_4bit, cfg.load_in_8bit)
        pm = PreferenceModel.from_pretrained(cfg.base, revision=cfg.revision, **kw)
    pm.shared_prefix = cfg.shared_prefix
    pm.truncation = cfg.truncation
    name = cfg.head_name or cfg.task or "default"
    cands = cands if cands is not None else training_candidates(cfg)
    if not len(cands):
        from prefheads.tasks import DataError

        raise DataError("no training rows", file=cands.source or cfg.data or cfg.task)
    items, n_trunc = encode_candidates(pm, cands, cfg.truncation)  # every data problem surfaces here
    cands, items, budget = within_budget(cfg, pm, cands, items, recorded_choices(Path(cfg.out)) if cfg.resume else None)
    tr, va = split(len(cands), cfg.val_fraction, cfg.seed, keys=prompt_keys(cands))
    init = _initial_head(pm, cfg.init_head, cfg.head_dropout) if cfg.init_head else None
    if init is not None:  # the saved head decides what is read and how: record that, not the defaults
        hc = init.config
        cfg = dataclasses.replace(cfg, pooler=hc.pooler, layer=hc.layer,
                                  layers=",".join(map(str, hc.layers)) if hc.layers else cfg.layers)
    out = Path(cfg.out)
    check_out_dir(out, cfg.to_dict(), cfg.overwrite)  # before anything is written there
    data = {"rows": len(cands), "candidates": len(items), "skipped": cands.skipped, "dropped": cands.dropped,
            "truncated": n_trunc, "truncation": cfg.truncation, "max_length": pm.max_length, **budget}
    if n_trunc:
        log.warning("%d of %d candidates exceed the model's %s-token context: cut (%s)", n_trunc, len(items),
                    pm.max_length, cfg.truncation)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_config.json").write_text(cfg.to_json())
    if name in pm.heads:
        pm.remove_head(name)
    # seeded here, right before the first random draw: what ran before (model loading, a GGUF
    # conversion, data loading) must not change the head a seed gives
    torch.manual_seed(cfg.seed)
    trg, vag = [cands.groups[g] for g in tr], [cands.groups[g] for g in va]
    if cfg.solver == "ridge":
        return _fit_probe(cfg, pm, name, cands, out, items, data, progress)
    if cfg.layer == "auto":
        return _fit_auto(cfg, pm, name, cands, tr, va, out, items, data, progress)
    t0 = time.perf_counter()
    feats, hit, score, selection = None, False, None, {}
    mixed = parse_layers(cfg.layers, pm.num_layers) if is_multi_layer(cfg.pooler) else None  # the layers it mixes
    if not MODES.get(cfg.mode).trains_backbone:  # one backbone pass (or the cache) before the head exists
        reads = init.config.reads if init is not None else mixed or [cfg.layer]
        wants = cfg.lm_score != "none" if init is None else init.uses_scores
        feats, hit = backbone_pass(progress, f"{len(items)} candidates",
                                    lambda: frozen_features(cfg, pm, cands, items, reads, wants))
        if wants and init is None:
            score, train_acc = choose_score(feats, cands.completions, trg, cfg.lm_score)
            selection = {"score": score, "train_accuracy": {k: round(v, 4) for k, v in train_acc.items()}}
    if init is not None:
        pm.attach_head(name, init)
        score = init.config.score_input
    else:
        head_kw: dict[str, Any] = {}
        if mixed:
            head_kw = {"layers": mixed, "pooler_kwargs": {"inner": cfg.layermix_inner}}
        pm.add_head(name, cfg.pooler, layer=cfg.layer, dropout=cfg.head_dropout, score_input=score, **head_kw)
    kw = {} if feats is None else {"states": feats.states, "scores": score_values(feats, cands, score)}
    trainable = MODES.get(cfg.mode)(pm, name, cands, cfg, **kw)
    if feats is None:  # lora / full: the backbone runs in training; setup may run it for cDPO
        backbone_pass(progress, f"{len(items)} candidates", trainable.setup)
    else:
        trainable.setup()
        trainable.cache_hit = hit
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    from prefheads.training.sharding import is_main_process

    main = is_main_process()  # of several processes, one writes (the others would truncate its files)
    if main and cfg.resume:
        cut_metrics(out)
    with bar(progress and main) as pb, open(out / "metrics.jsonl" if main else os.devnull, "a" if cfg.resume else "w") as mf:
        steps = cfg.epochs * -(-len(tr) // cfg.batch_size)
        tid = pb.add_task(f"training ({cfg.mode})", total=steps)

        def on_step(m: dict[str, float]) -> None:
            mf.write(json.dumps(m) + "\n")
            mf.flush()
            pb.update(tid, completed=m["step"] * cfg.grad_accum,
                      info=f"loss {m['loss']:.3f} acc {m['pair_accuracy']:.2f} margin {m['margin']:.2f}")

        history, best_epoch = train(trainable, trg, vag, cfg, out, on_step, record=budget)
    train_s = time.perf_counter() - t1
    head = pm.heads[name]
    if score is not None and init is None:
        selection.update(settle(trainable, trainable.scores, vag))
        head.config.meta["lm_score"] = selection
    head.config.meta.update({"task": cfg.task or Path(cfg.data).name, "template": cfg.template,
                             "objective": cfg.objective, "mode": cfg.mode, "epochs": cfg.epochs, "best_epoch": best_epoch,
                             "n_train": len(tr), "n_val": len(va), "seed": cfg.seed,
                             "val_pair_accuracy": round(history[best_epoch - 1]["val_pair_accuracy"], 4),
                             "data": data})
    if main:
        trainable.save(out)
        pm.save_heads(out)
    return FitResult(out, name, history, best_epoch, len(tr), len(va), setup_s, train_s,
                     getattr(trainable, "cache_hit", False), data)


def _fit_auto(cfg: FitConfig, pm: PreferenceModel, name: str, cands: Candidates, tr: list[int], va: list[int],
              out: Path, items: list[Any], data: dict[str, Any], progress: bool = False) -> FitResult:
    """``--layer auto``: one head per candidate layer on ONE backbone pass; keep the best on validation.

    Selection uses only the validation split carved from the training data, never eval data, by
    choice accuracy (the preferred candidate must beat every other one). The candidate heads train
    at once as one stacked module (:mod:`prefheads.training.stacked`) unless an option needs the
    one-head loop.
    """
    from prefheads.training.loop import train
    from prefheads.training.stacked import train_layer_heads

    if not va:
        raise ValueError("--layer auto chooses on a validation split: set val_fraction > 0")
    layers = parse_layers(cfg.layers, pm.num_layers) if cfg.layers else auto_layers(pm.num_layers)
    t0 = time.perf_counter()
    feats, hit = backbone_pass(progress, f"{len(items)} candidates, {len(layers)} layers",
                                lambda: frozen_features(cfg, pm, cands, items, layers, cfg.lm_score != "none"))
    states = feats.states
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    trg, vag = [cands.groups[g] for g in tr], [cands.groups[g] for g in va]
    score, selection = None, {}
    if cfg.lm_score != "none":
        score, train_acc = choose_score(feats, cands.completions, trg, cfg.lm_score)
        selection = {"score": score, "train_accuracy": {k: round(v, 4) for k, v in train_acc.items()}}
    values = score_values(feats, cands, score)
    # with --lm-score auto each layer's head is also trained without the score: validation decides
    variants = [score] + ([None] if score is not None and cfg.lm_score == "auto" else [])
    scores: dict[int, float] = {}
    pair_scores: dict[int, float] = {}
    by_variant: dict[str, dict[str, float]] = {}
    best: tuple[float, str, int, list, int] | None = None
    runs = [(f"{name}@{layer}" + (f"+{variant}" if variant else ""), layer, variant)
            for layer in layers for variant in variants]
    # every candidate head at once where the stack trains what separate runs would; else one by one
    stacked = train_layer_heads(pm, cfg, runs, states, values, trg, vag, out)
    for layer in layers:
        for variant in variants:
            tmp = f"{name}@{layer}" + (f"+{variant}" if variant else "")
            if tmp not in stacked:
                torch.manual_seed(cfg.seed)  # every candidate head starts from the same draw
                pm.add_head(tmp, cfg.pooler, layer=layer, dropout=cfg.head_dropout, activate=False, score_input=variant)
            trainable = MODES.get(cfg.mode)(pm, tmp, cands, cfg, states=states, scores=values if variant else None)
            trainable.setup()
            if tmp in stacked:
                history, best_epoch = stacked[tmp]
            else:
                history, best_epoch = train(trainable, trg, vag, cfg, out / "layers" / tmp.rpartition("@")[2],
                                            record={k: v for k, v in data.items() if k == "budget"})
            if variant is not None:
                pm.heads[tmp].config.meta["lm_score"] = {**selection, **settle(trainable, values, vag)}
            acc = choice_accuracy(trainable, vag)
            by_variant.setdefault(str(layer), {})[variant or "none"] = round(acc, 4)
            if acc > scores.get(layer, -1.0):
                scores[layer], pair_scores[layer] = acc, history[best_epoch - 1]["val_pair_accuracy"]
            if best is None or acc > best[0]:
                if best is not None:
                    pm.remove_head(best[1])
                best = (acc, tmp, layer, history, best_epoch)
            else:
                pm.remove_head(tmp)
    _, tmp, layer, history, best_epoch = best
    head = pm.remove_head(tmp)
    if len(variants) > 1 and not head.uses_scores:
        head.config.meta["lm_score"] = {**selection, "kept": "none", "reason": "the head without the score was "
                                        "better on validation", "val_accuracy_by_variant": by_variant[str(layer)]}
    pm.attach_head(name, head)
    head.config.meta.update({"task": cfg.task or Path(cfg.data).name, "template": cfg.template,
                             "objective": cfg.objective, "mode": cfg.mode,
                             "epochs": cfg.epochs, "best_epoch": best_epoch, "n_train": len(tr), "n_val": len(va),
                             "seed": cfg.seed, "chosen_layer": layer, "val_accuracy": round(scores[layer], 4),
                             "val_pair_accuracy": round(pair_scores[layer], 4),
                             "layer_scores": {str(k): round(v, 4) for k, v in scores.items()}, "data": data})
    pm.save_heads(out)
    (out / "layer_scores.json").write_text(json.dumps(
        {"chosen": layer, "metric": "validation choice accuracy", "val_accuracy": scores,
         "val_pair_accuracy": pair_scores, "n_val": len(va), "lm_score": head.config.score_input,
         "val_accuracy_by_lm_score": by_variant}, indent=2))
    return FitResult(out, name, history, best_epoch, len(tr), len(va), setup_s, time.perf_counter() - t1, hit, data)


def _fit_probe(cfg: FitConfig, pm: PreferenceModel, name: str, cands: Candidates, out: Path, items: list[Any],
               data: dict[str, Any], progress: bool = False) -> FitResult:
    """``--solver ridge``: a linear head in closed form; layer (with ``--layer auto``), LM
    score (with ``--lm-score auto``) and L2 strength chosen by K-fold cross-validation on the
    training data (:mod:`prefheads.training.probe`), then refitted on all of it."""
    from prefheads.training import probe

    layers = ([cfg.layer] if cfg.layer != "auto" else
              parse_layers(cfg.layers, pm.num_layers) if cfg.layers else auto_layers(pm.num_layers))
    wanted = cfg.lm_score
    raw = reads_raw_view(cfg)
    t0 = time.perf_counter()
    feats, hit = backbone_pass(progress, f"{len(items)} candidates, {len(layers)} layer(s)",
                                lambda: frozen_features(cfg, pm, cands, items, layers, wanted != "none"))
    if raw:
        rf, rhit = backbone_pass(progress, f"{len(items)} candidates, raw view", lambda: raw_features(cfg, pm, cands))
        feats.raw_logprob_sum, feats.raw_n_tokens, hit = rf.logprob_sum, rf.n_tokens, hit and rhit
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    groups = list(cands.groups)
    score, selection, values, combo, combo_names = None, {}, None, None, None
    if wanted != "none":
        table = all_scores(feats, cands.completions)
        score, train_acc = choose_score(feats, cands.completions, groups, "auto" if wanted == "all" else wanted, table)
        selection = {"score": score, "train_accuracy": {k: round(v, 4) for k, v in train_acc.items()}}
        values = table[score]
        if wanted in ("auto", "all") and len(table) > 1:
            combo_names = list(table)
            combo = torch.stack([table[n] for n in combo_names], 1)
    stacked = torch.stack([feats.states[l].float() for l in layers])
    cands_cv = probe.cross_validate(stacked, values, groups, layers, folds=cfg.cv_folds, seed=cfg.seed, combo=combo,
                                    clusters=prompt_keys(cands))
    alone = {("combination" if c.combo else "score"): round(c.cv_accuracy, 4) for c in cands_cv if c.layer is None}
    if wanted == "all":
        cands_cv = [c for c in cands_cv if c.combo]
    elif wanted != "auto" and score is not None:  # a named score is always used
        cands_cv = [c for c in cands_cv if c.score]
    choice = probe.best(cands_cv)
    used = combo if choice.combo else values
    head = probe.build_head(pm, name, feats.states, used, combo_names if choice.combo else score, groups, choice)
    by_layer: dict[str, dict[str, float]] = {}
    for c in cands_cv:
        if c.layer is not None:
            key = "combination" if c.combo else score if c.score else "none"
            row = by_layer.setdefault(str(c.layer), {})
            row[key] = max(row.get(key, 0.0), round(c.cv_accuracy, 4))
    best_by_layer = {str(l): max(v.values()) for l, v in by_layer.items()}
    kept = ("scores" if choice.combo else "score") if choice.layer is None else "head" if choice.score else "none"
    if score is not None:
        head.config.meta["lm_score"] = {**selection, "kept": kept, "combined": combo_names if choice.combo else None,
                                        "cv_accuracy_score": alone.get("score"),
                                        "cv_accuracy_combination": alone.get("combination")}
    chosen = head.config.layer if choice.layer is not None else None
    head.config.meta.update({"task": cfg.task or Path(cfg.data).name, "template": cfg.template,
                             "objective": "least squares (ridge)", "mode": cfg.mode, "solver": "ridge",
                             "n_train": len(groups), "n_val": 0, "seed": cfg.seed, "chosen_layer": chosen,
                             "l2": choice.l2, "cv_folds": cfg.cv_folds,
                             "val_accuracy": round(choice.cv_accuracy, 4), "layer_scores": best_by_layer,
                             "data": data})
    pm.save_heads(out)
    (out / "layer_scores.json").write_text(json.dumps(
        {"chosen": chosen, "choice": choice.to_dict(), "metric": f"{cfg.cv_folds}-fold cross-validated choice accuracy",
         "val_accuracy": best_by_layer,
         "lm_score": score, "combined": combo_names if choice.combo else None, "l2_grid": list(probe.L2_GRID), "val_accuracy_by_lm_score": by_layer,
         "candidates": [c.to_dict() for c in cands_cv]}, indent=2))
    train_acc = probe.choice_accuracy_of(head, feats, used, groups)
    history = [{"epoch": 1, "val_accuracy": choice.cv_accuracy, "val_pair_accuracy": choice.cv_accuracy,
                "train_accuracy": train_acc}]
    return FitResult(out, name, history, 1, len(groups), 0, setup_s, time.perf_counter() - t1, hit, data)
