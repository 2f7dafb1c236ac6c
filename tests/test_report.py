"""Reports: side-by-side tables, PNG plots, and the self-contained HTML page."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from prefheads.eval import evaluate
from prefheads.eval.report import (comparison_rows, make_plots, margin_note, plot_reliability, pooled_bins, render_html,
                              run_labels, write_report)
from test_evaluation import tiny_pm, with_heads

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run():
    pm = with_heads(tiny_pm())
    return evaluate(pm, ["openbookqa", "hh_rlhf"], data_dir="bundled", max_eval=8, seed=0, lm_eval_baseline=False)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables = 0
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag == "table":
            self.tables += 1
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained_with_decodable_pngs(run, tmp_path):
    out = write_report(run.results, run.records, tmp_path / "report.html")
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    page.close()
    assert page.tables >= 4 and not page.links  # no external resources
    names = [img["alt"] for img in page.images]
    assert "task_scores.png" in names and "scores_dph_sep.png" in names and "scores_logprob.png" in names
    assert "reliability_dph_sep.png" in names and "reliability_dph_con.png" not in names  # separable only
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        png = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert png.startswith(PNG) and len(png) > 1000
        saved = tmp_path / "report_files" / img["alt"]
        assert saved.read_bytes() == png
    text = " ".join(page.text)
    for word in ("openbookqa", "hh_rlhf", "dph:sep", "ECE", "Predicted-choice distributions", "(gold)", "[gpt4all]"):
        assert word in text


def test_html_escapes_names():
    res = {"model": {"id": "<script>x</script>"}, "heads": {"names": []}, "config": {}, "methods": ["logprob"],
           "tasks": {}, "aggregates": {}}
    page = render_html(res, {})
    assert "<script>x" not in page and "&lt;script&gt;" in page


def test_comparison_rows_side_by_side(run):
    a = run.results
    b = {**a, "methods": ["logprob"], "tasks": {"openbookqa": a["tasks"]["openbookqa"]}, "aggregates": {}}
    header, rows = comparison_rows([a, b], ["a", "b"])
    assert header == ["task", "metric", "a logprob", "a length", "a dph:sep", "a dph:con", "b logprob"]
    hh = [r for r in rows if r[0].startswith("hh_rlhf")][0]
    assert hh[1] == "score" and hh[-1] == "—"  # b has no hh_rlhf
    obqa = rows.index([r for r in rows if r[0].startswith("openbookqa")][0])
    assert rows[obqa][2] == rows[obqa][6]  # same log-prob results in both
    assert any(r[0] == "[gpt4all]" and r[-1] == "—" and "(partial)" in r[2] for r in rows)
    assert run_labels(["x/r.json", "y/r.json"]) == ["x/r", "y/r"]
    assert run_labels(["x/a.json", "y/b.json"]) == ["a", "b"]


def _task_rows(rows, task):
    start = next(i for i, r in enumerate(rows) if r[0].startswith(task))
    end = next((i for i, r in enumerate(rows) if i > start and r[0]), len(rows))
    return {r[1]: r[2:] for r in rows[start:end]}


def test_tables_show_the_interval_mcnemar_and_similar_length_pairs(run):
    header, rows = comparison_rows([run.results])
    cols = header[2:]
    hh = run.results["tasks"]["hh_rlhf"]
    got = _task_rows(rows, "hh_rlhf")
    base = hh["baseline"]["method"]
    assert base in ("logprob", "length") and got["vs baseline (pts)"][cols.index(base)] == "baseline"
    for h in ("dph:sep", "dph:con"):
        b = hh["methods"][h]
        lo, hi = b["vs_baseline_ci"]
        assert got["vs baseline (pts)"][cols.index(h)] == f"{100 * b['vs_baseline']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        assert float(got["McNemar p"][cols.index(h)]) == pytest.approx(b["vs_baseline_p"], abs=5e-4)
    similar = f"pair_accuracy_similar_length (n={hh['similar_length']['n']})"
    assert [float(v) for v in got[similar]] == pytest.approx(
        [100 * hh["methods"][m]["metrics"]["pair_accuracy_similar_length"] for m in cols], abs=0.05)
    assert "1000 resamples, seed 0" in margin_note(run.results)
    page = _Page()
    page.feed(render_html(run.results, {}))
    text = " ".join(page.text)
    assert margin_note(run.results) in text and "McNemar p" in text and similar in text


def test_tables_without_bootstrap_show_the_margin_alone(run):
    res = json.loads(json.dumps(run.results))
    for t in res["tasks"].values():
        t["bootstrap"]["resamples"] = 0
        for b in t["methods"].values():
            b.pop("vs_baseline_ci", None)
    got = _task_rows(comparison_rows([res])[1], "openbookqa")
    cell = got["vs baseline (pts)"][res["methods"].index("dph:sep")]
    assert cell == f"{100 * res['tasks']['openbookqa']['methods']['dph:sep']['vs_baseline']:+.1f}"
    assert "no interval" in margin_note(res)


def test_reliability_bins_pool_counts_over_tasks(run):
    bins = pooled_bins(run.results, "dph:sep")
    want = sum(t["methods"]["dph:sep"]["calibration"]["n_candidates"] for t in run.results["tasks"].values())
    assert sum(b["count"] for b in bins) == want
    assert pooled_bins(run.results, "dph:con") == []
    with pytest.raises(ValueError, match="separable"):
        plot_reliability(run.results, "dph:con")


def test_plots_need_matplotlib_with_a_clear_message(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"prefheads\[plots\]"):
        make_plots(run.results, run.records)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_report_renders_in_headless_chromium(run, tmp_path):
    out = write_report(run.results, run.records, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--screenshot={shot}",
                    "--window-size=1200,1600", out.resolve().as_uri()], check=True, timeout=120,
                   capture_output=True)
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_report_includes_the_per_layer_plot_of_a_layers_run(run, tmp_path):
    from prefheads.commands.layers import plot_layers

    heads_dir = tmp_path / "heads"
    heads_dir.mkdir()
    plot_layers({0: 0.6, 1: 0.7, -1: 0.65}, 0.55, heads_dir / "layers.png", "test")
    results = dict(run.results, heads=dict(run.results.get("heads") or {}, dir=str(heads_dir)))
    out = write_report(results, run.records, tmp_path / "report.html")
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert "layers.png" in [img["alt"] for img in page.images]


def test_report_with_the_harness_baseline(tmp_path):
    pm = with_heads(tiny_pm())
    r = evaluate(pm, ["openbookqa", "hh_rlhf"], data_dir="bundled", max_eval=6, seed=0)
    out = write_report(r.results, r.records, tmp_path / "report.html")
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    page.close()
    names = [img["alt"] for img in page.images]
    assert "scores_lm-eval_acc_norm.png" in names and "scores_dph_sep.png" in names
    text = " ".join(page.text)
    assert "lm-eval:acc" in text and "vs baseline" in text and "pts" in text
