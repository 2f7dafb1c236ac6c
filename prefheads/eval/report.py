"""Evaluation results as files, side-by-side tables, plots, and a self-contained HTML report.

Works on the results dict / per-example records of :func:`prefheads.eval.evaluate.evaluate`:
:func:`save_run` writes them as ``results.json`` (versioned: ``schema``, ``schema_version``) +
``results.examples.jsonl``, :func:`load_results` / :func:`load_records` read them back. Plots
need matplotlib (``pip install 'prefheads[plots]'``), imported only when a plot is drawn, with
the Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefheads.eval.evaluate import SCHEMA, SCHEMA_VERSION, EvalRun
from prefheads.eval.margins import LENGTH, SIMILAR_KEY

PLOTS_HINT = "plots need matplotlib: pip install 'prefheads[plots]' (or pip install matplotlib)"


# ----------------------------------------------------------------------------- files

def examples_path(out: str | os.PathLike) -> Path:
    """Where the per-example JSONL of ``results.json`` goes: ``results.examples.jsonl``."""
    out = Path(out)
    return out.with_name(out.stem + ".examples.jsonl")


def save_run(run: EvalRun, out: str | os.PathLike, examples_out: str | os.PathLike | None = None) -> Path:
    """Write the results JSON and the per-example JSONL beside it; returns the JSON path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ex_path = Path(examples_out) if examples_out is not None else examples_path(out)
    with open(ex_path, "w", encoding="utf-8") as f:
        for rec in run.records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    results = dict(run.results, examples_file=os.path.relpath(ex_path, out.parent))
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results JSON written by :func:`save_run` (checks its schema)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable results file ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a prefheads eval results file (schema {data.get('schema') if isinstance(data, dict) else None!r})")
    if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {data['schema_version']} is newer than this prefheads "
                         f"({SCHEMA_VERSION}); upgrade prefheads")
    return data


def load_records(results_path: str | os.PathLike, results: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The per-example records that belong to a results JSON."""
    results = results if results is not None else load_results(results_path)
    ex = Path(results_path).parent / results.get("examples_file", examples_path(results_path).name)
    with open(ex, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.1f}"


def _dist(counts: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items())


# ----------------------------------------------------------------------------- tables

def _score_label(method: str) -> str:
    """Axis label of a method's candidate scores."""
    if method.startswith("dph:"):
        return "reward"
    return {"lm-eval:acc": "summed log-prob", "lm-eval:acc_norm": "log-prob per character",
            LENGTH: "reply length (characters)"}.get(method, "mean log-prob")


def _vs_baseline(task: dict[str, Any], method: str, block: dict[str, Any]) -> str:
    # the strongest method without a head is marked; heads show their margin over it in points,
    # with its paired-bootstrap interval: a margin whose interval spans zero is not a win
    base = task.get("baseline")
    if not base:
        return "—"
    if "vs_baseline" in block:
        ci = block.get("vs_baseline_ci")
        interval = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
        return f"{100 * block['vs_baseline']:+.1f}{interval}"
    return "baseline" if method == base["method"] else ""


def _p(block: dict[str, Any]) -> str:
    p = block.get("vs_baseline_p")
    return "" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def margin_note(results: dict[str, Any]) -> str:
    """How to read the ``vs baseline`` rows of a run: what the interval and the p-value are."""
    boot = next((t["bootstrap"] for t in results["tasks"].values() if t.get("bootstrap")), None)
    if boot is None or not boot["resamples"]:
        how = "no interval (bootstrap off)"
    else:
        how = (f"[{100 * boot['confidence']:.0f}% interval: paired bootstrap over examples, "
               f"{boot['resamples']} resamples, seed {boot['seed']}]")
    return (f"vs baseline (pts): a head's margin in points over the strongest method without a head {how}; "
            "McNemar p: exact test of equal accuracy (accuracy scores only). "
            "A margin whose interval spans 0 is not a win.")


def comparison_rows(results: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a side-by-side table of several results (one column per file × method).

    Rows: per task its score, each metric, the predicted-choice distribution, the margin of
    each head over the strongest method without a head (marked "baseline") with its 95 %
    interval, McNemar's p where the score is an accuracy, and ties (values in %); then every
    aggregate (without intervals). Missing entries show as "—"; the similar-length pair
    accuracy names how many pairs it counts.
    """
    labels = list(labels) if labels is not None else [f"run{i + 1}" for i in range(len(results))]
    cols = [(i, m) for i, r in enumerate(results) for m in r["methods"]]
    single = len(results) == 1
    header = ["task", "metric"] + [m if single else f"{labels[i]} {m}" for i, m in cols]
    task_names = list(dict.fromkeys(t for r in results for t in r["tasks"]))
    rows: list[list[str]] = []
    for t in task_names:
        metrics = list(dict.fromkeys(k for r in results if t in r["tasks"]
                                     for b in r["tasks"][t]["methods"].values() for k in b["metrics"]))

        def cell(i: int, m: str, fn) -> str:
            block = results[i]["tasks"].get(t, {}).get("methods", {}).get(m)
            return "—" if block is None else fn(block)

        ns = {str(results[i]["tasks"][t]["n"]) for i in range(len(results)) if t in results[i]["tasks"]}
        rows.append([f"{t} (n={'/'.join(sorted(ns))})", "score"] + [cell(i, m, lambda b: _pct(b["score"])) for i, m in cols])
        for k in metrics:
            label = k
            if k == SIMILAR_KEY:
                ks = {str(r["tasks"][t]["similar_length"]["n"]) for r in results
                      if "similar_length" in r["tasks"].get(t, {})}
                label = f"{k} (n={'/'.join(sorted(ks))})"
            rows.append(["", label] + [cell(i, m, lambda b, k=k: _pct(b["metrics"].get(k))) for i, m in cols])
        rows.append(["", "predicted"] + [cell(i, m, lambda b: _dist(b["predicted"])) for i, m in cols])
        if any("calibration" in results[i]["tasks"].get(t, {}).get("methods", {}).get(m, {}) for i, m in cols):
            rows.append(["", "ECE / Brier"] + [cell(i, m, lambda b: f"{b['calibration']['ece']:.3f} / {b['calibration']['brier']:.3f}"
                                                     if "calibration" in b else "—") for i, m in cols])
        if any(results[i]["tasks"].get(t, {}).get("baseline") for i, _ in cols):
            rows.append(["", "vs baseline (pts)"] + [cell(i, m, lambda b, i=i, m=m: _vs_baseline(results[i]["tasks"][t], m, b))
                                               for i, m in cols])
        if any(results[i]["tasks"].get(t, {}).get("methods", {}).get(m, {}).get("vs_baseline_p") is not None
               for i, m in cols):
            rows.append(["", "McNemar p"] + [cell(i, m, _p) for i, m in cols])
        rows.append(["", "ties"] + [cell(i, m, lambda b: str(b["ties"])) for i, m in cols])
    for g in dict.fromkeys(g for r in results for g in r.get("aggregates", {})):
        def agg(i: int, m: str) -> str:
            a = results[i].get("aggregates", {}).get(g)
            if a is None or m not in a["values"]:
                return "—"
            return _pct(a["values"][m]) + (" (partial)" if a["partial"] else "")
        rows.append([f"[{g}]", "score"] + [agg(i, m) for i, m in cols])
    return header, rows


def comparison_table(results: Sequence[dict[str, Any]], labels: Sequence[str] | None = None, title: str | None = None) -> Any:
    """:func:`comparison_rows` as a ``rich.table.Table``."""
    from rich.markup import escape
    from rich.table import Table

    header, rows = comparison_rows(results, labels)
    table = Table(title=escape(title) if title else None)
    for i, h in enumerate(header):
        table.add_column(escape(h), justify="left" if i < 2 else "right", overflow="fold")
    for row in rows:  # cells are plain text: "[glue]" is not rich markup
        table.add_row(*(escape(c) for c in row), end_section=row[1] == "ties")
    return table


def run_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short distinct labels for result files: their stems, else their parent folder names."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]


# ----------------------------------------------------------------------------- plots

def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(PLOTS_HINT) from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return -(-n // cols), cols


def plot_reward_distributions(records: Sequence[dict[str, Any]], method: str) -> bytes:
    """PNG: histograms of the scores of correct vs incorrect candidates, one panel per task."""
    plt = _plt()
    by_task: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        if method not in rec["scores"]:
            continue
        good, bad = by_task.setdefault(rec["task"], ([], []))
        for j, s in enumerate(rec["scores"][method]):
            (good if j == rec["label"] else bad).append(s)
    if not by_task:
        raise ValueError(f"no records carry method {method!r}")
    rows, cols = _grid(len(by_task))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    for ax, (task, (good, bad)) in zip(axes.flat, by_task.items()):
        lo, hi = min(good + bad), max(good + bad)
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
        ax.hist(bad, bins=bins, alpha=0.55, density=True, label=f"incorrect ({len(bad)})", color="#d62728")
        ax.hist(good, bins=bins, alpha=0.55, density=True, label=f"correct ({len(good)})", color="#2ca02c")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(_score_label(method))
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(by_task):]:
        ax.axis("off")
    fig.suptitle(f"{method}: scores of correct vs incorrect candidates")
    return _png(fig)


def pooled_bins(results: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """Reliability bins of ``method`` pooled over every task that has them (count-weighted)."""
    pooled: list[dict[str, Any]] = []
    for t in results["tasks"].values():
        cal = t["methods"].get(method, {}).get("calibration")
        if not cal:
            continue
        if not pooled:
            pooled = [{"lower": b["lower"], "upper": b["upper"], "count": 0, "conf": 0.0, "acc": 0.0} for b in cal["bins"]]
        for p, b in zip(pooled, cal["bins"]):
            if b["count"]:
                p["count"] += b["count"]
                p["conf"] += b["confidence"] * b["count"]
                p["acc"] += b["accuracy"] * b["count"]
    for p in pooled:
        n = p.pop("count")
        conf, acc = p.pop("conf"), p.pop("acc")
        p.update(count=n, confidence=conf / n if n else None, accuracy=acc / n if n else None)
    return pooled


def plot_reliability(results: dict[str, Any], method: str) -> bytes:
    """PNG: reliability diagram of σ(reward) of a separable head, pooled over tasks."""
    plt = _plt()
    bins = pooled_bins(results, method)
    if not bins:
        raise ValueError(f"{method} has no calibration data (only separable heads are calibrated)")
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = bins[0]["upper"] - bins[0]["lower"]
    full = [b for b in bins if b["count"]]
    ax.bar([b["lower"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
           edgecolor="black", color="#1f77b4", alpha=0.8, label="accuracy")
    ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], "o", color="black", ms=3, label="mean σ(r)")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    n = sum(b["count"] for b in full)
    ece = sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in full)
    ax.set(ylabel="fraction correct", xlim=(0, 1), ylim=(0, 1), title=f"{method} reliability (ECE {ece:.3f}, {n} candidates)")
    ax.legend(fontsize=8, loc="upper left")
    axc.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="gray", edgecolor="black")
    axc.set(xlabel="σ(reward)", ylabel="candidates")
    return _png(fig)


def plot_task_scores(results: dict[str, Any]) -> bytes:
    """PNG: grouped bar chart of each task's score (and every aggregate) by method."""
    plt = _plt()
    methods = list(results["methods"])
    groups = [(t, b["methods"]) for t, b in results["tasks"].items()]
    groups += [(f"[{g}]", {m: {"score": v} for m, v in a["values"].items()}) for g, a in results.get("aggregates", {}).items()]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(methods)) ** 0.5 + 2), 4))
    w = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        xs = [i + (k - (len(methods) - 1) / 2) * w for i in range(len(groups))]
        ys = [100 * g[1][m]["score"] if m in g[1] else 0.0 for g in groups]
        ax.bar(xs, ys, width=w, label=m)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="score (%)", title="per-task score: log-prob vs DPH")
    ax.legend(fontsize=8)
    return _png(fig)


def make_plots(results: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """Every plot of a run as ``{file name: PNG bytes}``."""
    def safe(m: str) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in m)

    plots = {"task_scores.png": plot_task_scores(results)}
    for m in results["methods"]:
        if any(m in r["scores"] for r in records):
            plots[f"scores_{safe(m)}.png"] = plot_reward_distributions(records, m)
        if pooled_bins(results, m):
            plots[f"reliability_{safe(m)}.png"] = plot_reliability(results, m)
    return plots


# ----------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5;padding:0 3px}"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], num_from: int = 2) -> str:
    e = html.escape
    out = ["<table><thead><tr>", *(f"<th>{e(str(h))}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{' class=num' if i >= num_from else ''}>{e(str(c))}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(results: dict[str, Any], plots: dict[str, bytes], title: str = "prefheads evaluation") -> str:
    """A self-contained HTML page: run info, tables of metrics / distributions, inlined PNGs."""
    e = html.escape
    model, heads, cfg = results["model"], results["heads"], results["config"]
    info = [("model", f"{model['id']} (revision {model.get('revision') or '—'})"),
            ("heads", (", ".join(heads["names"]) or "none (log-prob only)") + (f" (from {heads['dir']})" if heads.get("dir") else "")),
            ("tasks", ", ".join(results["tasks"]) + (f" (missing data: {', '.join(results['missing'])})" if results.get("missing") else "")),
            ("max eval / seed", f"{cfg.get('max_eval')} / {cfg.get('seed')}"),
            ("template variant", cfg.get("variant")), ("created", results.get("created")),
            ("prefheads", results.get("prefheads_version")), ("wall time", f"{results.get('wall_seconds')} s")]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>", _table(["run", ""], [[k, v] for k, v in info], num_from=2)]
    header, rows = comparison_rows([results])
    parts += ["<h2>Metrics (%)</h2><p>Score = mean of the task's official metrics; "
              "ties are broken toward the first candidate.</p>", f"<p>{e(margin_note(results))}</p>",
              _table(header, rows)]
    dist_rows = []
    for t, b in results["tasks"].items():
        dist_rows.append([t, "(gold)", _dist(b["gold"]), ""])
        for m, mb in b["methods"].items():
            dist_rows.append(["", m, _dist(mb["predicted"]), f"{mb['majority_choice']} {100 * mb['majority_fraction']:.0f}%"])
    parts += ["<h2>Predicted-choice distributions</h2>", _table(["task", "method", "counts", "majority"], dist_rows)]
    cal_rows = [[t, m, f"{mb['calibration']['ece']:.4f}", f"{mb['calibration']['brier']:.4f}", mb["calibration"]["n_candidates"]]
                for t, b in results["tasks"].items() for m, mb in b["methods"].items() if "calibration" in mb]
    parts.append("<h2>Calibration of separable heads</h2>")
    parts.append(_table(["task", "head", "ECE", "Brier", "candidates"], cal_rows) if cal_rows
                 else "<p>No separable head evaluated: calibration is reported for heads trained with the separable objective.</p>")
    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        parts.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict[str, Any], records: Sequence[dict[str, Any]], out: str | os.PathLike,
                 png_dir: str | os.PathLike | None = None, title: str = "prefheads evaluation") -> Path:
    """Draw every plot, save them as PNG files and write the self-contained HTML report.

    Args:
        results: Results dict of :func:`prefheads.eval.evaluate.evaluate`.
        records: Its per-example records.
        out: HTML path.
        png_dir: Where the PNGs go (default: ``<out stem>_files/`` beside the HTML).
        title: Page title.
    """
    out = Path(out)
    plots = make_plots(results, records)
    # a head folder made by `prefheads layers` carries its per-layer plot: show it too
    heads_dir = (results.get("heads") or {}).get("dir")
    if heads_dir and (Path(heads_dir) / "layers.png").is_file():
        plots["layers.png"] = (Path(heads_dir) / "layers.png").read_bytes()
    png_dir = Path(png_dir) if png_dir is not None else out.with_name(out.stem + "_files")
    png_dir.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        (png_dir / name).write_bytes(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(results, plots, title), encoding="utf-8")
    return out
