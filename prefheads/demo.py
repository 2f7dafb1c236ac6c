"""The README's main job: fit a head on bundled data with the bundled model, compare with log-prob."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefheads.eval import LMEVAL_PREFIX, baseline_of, score_examples, summarize
from prefheads.eval.lmeval import score_lmeval
from prefheads.eval.margins import N_RESAMPLES, accuracy_margin


def print_summary(summary: dict[str, Any], title: str, choice_names: list[str] | None = None) -> None:
    """Print accuracy and the predicted-choice distribution of every method as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "accuracy", "predicted choices", "ties"):
        table.add_column(col)
    for name, m in summary.items():
        if isinstance(m, dict) and "accuracy" in m:
            dist = " ".join(f"{k}:{v}" for k, v in m["predicted"].items())
            table.add_row(name, f"{100 * m['accuracy']:.1f}%", dist, str(m["ties"]))
    table.add_row("(gold)", "", " ".join(f"{k}:{v}" for k, v in summary["gold"].items()), "")
    Console().print(table)


def run_demo(out: Path = Path("runs/demo"), max_train: int | None = None, max_eval: int | None = None,
             epochs: int = 10, seed: int = 0, base: str | None = None, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Fit the default head on the bundled OpenBookQA slice and evaluate it against log-prob.

    Uses the bundled SmolLM2-135M-Instruct (or ``base``), 1,000 training and 500 test questions
    of OpenBookQA (Apache-2.0), and ``fit``'s defaults (the template family, layer and LM score
    chosen as ``prefheads fit`` chooses them). Log-prob is scored in the chat turn under both
    template families (mean and summed over the answer's tokens) and as lm-evaluation-harness
    scores the same questions; the strongest of them on these test questions is the baseline the
    head is compared with, with a paired bootstrap interval of the margin and McNemar's p
    (:func:`prefheads.eval.margins.accuracy_margin`, seeded by ``seed``). Returns the evaluation
    summary and writes it to ``out/results.json``.
    """
    from prefheads import tasks
    from prefheads.model import PreferenceModel
    from prefheads.training import FitConfig, fit

    t0 = time.perf_counter()
    pm = PreferenceModel.from_pretrained(base)
    cfg = FitConfig(base=base, task="openbookqa", data_dir="bundled", out=str(out), epochs=epochs,
                    seed=seed, max_train=max_train, overwrite=overwrite)
    res = fit(cfg, pm=pm, progress=progress)
    best = res.history[res.best_epoch - 1]
    hc = pm.heads[res.head_name].config
    how = (f"{cfg.cv_folds}-fold cross-validated choice accuracy {best['val_accuracy']:.3f}" if cfg.solver == "ridge"
           else f"best epoch {res.best_epoch}, validation pair accuracy {best['val_pair_accuracy']:.3f}")
    print(f"trained head {res.head_name!r} on {res.n_train} questions (template {cfg.template}; layer {hc.layer}; "
          f"LM score {', '.join(hc.score_names) or 'none'}): {how}; backbone {res.setup_seconds:.0f}s"
          f"{' (feature cache hit)' if res.cache_hit else ''}, head {res.train_seconds:.0f}s")

    def load(variant: str) -> list[Any]:
        return list(tasks.load_examples("openbookqa", split="eval", data_dir="bundled", limit=max_eval, variant=variant))

    examples = load(cfg.template)
    scores = score_examples(pm, examples)
    scores.extra = {"logprob_sum": scores.logprob_sum}
    for variant in ("paper", "lm-eval"):  # log-prob in the chat turn under each template family
        if variant != cfg.template:
            other = score_examples(pm, load(variant), heads=[])
            scores.extra.update({f"{variant}:logprob": other.logprob, f"{variant}:logprob_sum": other.logprob_sum})
    # the same questions as lm-evaluation-harness scores them
    scores.extra.update(score_lmeval(pm, load("lm-eval")).methods(prefix=LMEVAL_PREFIX))
    summary = summarize(scores)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print_summary(summary, f"OpenBookQA test ({summary['n']} questions), {pm.model_id}")
    methods = {m: v for m, v in summary.items() if isinstance(v, dict) and "accuracy" in v}
    summary["baseline"] = baseline_of(methods, key="accuracy")
    best, lp = summary["baseline"]["method"], summary["baseline"]["score"]
    head = summary[f"dph:{res.head_name}"]
    tables = scores.methods()
    head.update(accuracy_margin(tables[f"dph:{res.head_name}"], tables[best], [ex.label for ex in examples], seed=seed))
    dph, (lo, hi) = head["accuracy"], head["vs_baseline_ci"]
    print(f"95% interval of the margin: paired bootstrap over the {summary['n']} questions, {N_RESAMPLES} resamples, "
          f"seed {seed}; p: McNemar's exact test")
    print(f"strongest log-prob baseline {best} {100 * lp:.1f}%  |  DPH accuracy {100 * dph:.1f}% "
          f"({100 * (dph - lp):+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}], p {head['vs_baseline_p']:.3f}; chance 25%)")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
