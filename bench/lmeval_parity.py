#!/usr/bin/env python
"""Parity of prefheads' lm-eval scoring with lm-evaluation-harness itself, and its speed.

Both sides score the same examples with the same local model folder (the bundled SmolLM2-135M-
Instruct, converted once into $PREFHEADS_CACHE/models) on CPU, fp32, zero-shot, no chat template:

* **harness**: ``lm_eval==0.4.13`` (model ``hf``, defaults: no BOS for SmolLM2) in its own virtual
  environment ``bench/.venv-lmeval`` (``--setup`` creates it; it never touches ``.venv``), running
  the harness's own task files (``bench/lmeval_tasks/*.yaml`` *include* them) on the first
  ``--limit`` rows of each ``shared/data`` file, reshaped into the hub's row layout;
* **prefheads**: ``load_examples(..., variant="lm-eval", limit=N)`` + :func:`prefheads.eval.lmeval.score_lmeval`
  (timed), and the same rows through ``prefheads eval --template lm-eval --max-eval N --subset first``
  (the user's command; its accuracies are printed beside).

Printed per task and metric (``acc``, ``acc_norm``, ``mean`` = summed log-prob / continuation
tokens, on the harness side from its own ``_encode_pair``): both accuracies, their difference in
points, the largest per-candidate log-prob difference, prediction disagreements, request strings
that differ, and both wall times (model loading excluded, reported apart).

Run (one heavy job at a time on a shared machine)::

    export PREFHEADS_CACHE=/tmp/phcache
    python bench/lmeval_parity.py --setup                       # once: bench/.venv-lmeval
    flock /tmp/prefheads-heavy.lock .venv/bin/python bench/lmeval_parity.py --limit 100
    flock /tmp/prefheads-heavy.lock .venv/bin/python bench/lmeval_parity.py --templates --limit 200

``--templates`` instead compares, on ARC-Easy with prefheads only, the paper's chat template
(mean log-prob, the paper's rule) with the lm-eval template (chat path and raw harness scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / ".venv-lmeval"
TASK_DIR = ROOT / "bench" / "lmeval_tasks"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_TASKS = ["arc_easy", "arc_challenge", "openbookqa", "boolq", "piqa", "winogrande"]
PINS = ["torch==2.13.0", "lm_eval==0.4.13", "transformers==5.24.0", "tokenizers==0.23.3", "accelerate==1.15.0"]
# prefheads task name -> (harness-side name, shared/data file)
TASKS = {
    "arc_easy": ("arc_easy", "arc/ARC-Easy-Test.jsonl"),
    "arc_challenge": ("arc_challenge", "arc/ARC-Challenge-Test.jsonl"),
    "openbookqa": ("openbookqa", "openbookqa/test.jsonl"),
    "boolq": ("boolq", "boolq/dev.jsonl"),
    "piqa": ("piqa", "piqa/valid.jsonl"),
    "winogrande": ("winogrande", "winogrande/dev.jsonl"),
    "glue/rte": ("rte", "glue/RTE/dev.tsv"),
    "glue/sst2": ("sst2", "glue/SST-2/dev.tsv"),
    "glue/cola": ("cola", "glue/CoLA/dev.tsv"),
    "glue/mrpc": ("mrpc", "glue/MRPC/dev.tsv"),
    "glue/qnli": ("qnli", "glue/QNLI/dev.tsv"),
    "glue/wnli": ("wnli", "glue/WNLI/dev.tsv"),
}
METRICS = ("acc", "acc_norm", "mean")


# ---------------------------------------------------------------------------- data in hub shape


def _jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def _tsv(path: Path, limit: int, columns: list[str] | None = None) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    names = columns or lines.pop(0).split("\t")
    rows = [dict(zip(names, ln.rstrip("\r").split("\t"))) for ln in lines if ln.strip()]
    return rows[:limit]


def hub_rows(task: str, data: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows of the task's shared/data file, shaped like its hub dataset."""
    path = data / TASKS[task][1]
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        key = "question" if task != "openbookqa" else "question_stem"
        return [{"id": r["id"], key: r["question"]["stem"], "answerKey": r["answerKey"],
                 "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                             "label": [c["label"] for c in r["question"]["choices"]]}} for r in _jsonl(path, limit)]
    if task == "boolq":  # aps/super_glue boolq: label 0 = False
        return [{"question": r["question"], "passage": r["passage"], "label": int(r["answer"])}
                for r in _jsonl(path, limit)]
    if task == "piqa":
        labels = (path.parent / "valid-labels.lst").read_text().split()
        return [{**r, "label": int(labels[i])} for i, r in enumerate(_jsonl(path, limit))]
    if task == "winogrande":
        return [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in _jsonl(path, limit)]
    if task == "glue/cola":
        return [{"sentence": r["sentence"], "label": int(r["label"])}
                for r in _tsv(path, limit, ["source", "label", "original_label", "sentence"])]
    rows = _tsv(path, limit)
    nli = {"entailment": 0, "not_entailment": 1}
    if task in ("glue/rte", "glue/qnli"):
        k1, k2 = ("sentence1", "sentence2") if task == "glue/rte" else ("question", "sentence")
        return [{k1: r[k1], k2: r[k2], "label": nli[r["label"]]} for r in rows]
    if task == "glue/sst2":
        return [{"sentence": r["sentence"], "label": int(r["label"])} for r in rows]
    if task == "glue/mrpc":
        return [{"sentence1": r["#1 String"], "sentence2": r["#2 String"], "label": int(r["Quality"])} for r in rows]
    if task == "glue/wnli":
        return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": int(r["label"])} for r in rows]
    raise KeyError(task)


# ---------------------------------------------------------------------------- the two sides


def side_harness(args: argparse.Namespace) -> dict[str, Any]:
    """Run lm-evaluation-harness on the prepared files (inside bench/.venv-lmeval)."""
    import lm_eval
    import lm_eval.tasks
    from importlib.metadata import version

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    work = Path(args.work)
    tdir = work / "tasks"
    tdir.mkdir(parents=True, exist_ok=True)
    htasks = Path(lm_eval.tasks.__file__).parent
    for t in args.tasks:
        src = (TASK_DIR / f"parity_{TASKS[t][0]}.yaml").read_text()
        (tdir / f"parity_{TASKS[t][0]}.yaml").write_text(
            src.replace("@HARNESS_TASKS@", str(htasks)).replace("@DATA@", str(work / "data")))
    t0 = time.perf_counter()
    lm = HFLM(pretrained=args.model, dtype="float32", batch_size=args.batch_size, device="cpu")
    import torch

    out: dict[str, Any] = {"version": version("lm_eval"), "load_s": time.perf_counter() - t0, "tasks": {},
                           "threads": torch.get_num_threads(), "torch": torch.__version__}
    tm = TaskManager(include_path=str(tdir), include_defaults=False)
    for t in args.tasks:
        name = f"parity_{TASKS[t][0]}"
        t1 = time.perf_counter()
        res = lm_eval.simple_evaluate(model=lm, tasks=[name], num_fewshot=0, task_manager=tm, log_samples=True,
                                      bootstrap_iters=0)
        wall = time.perf_counter() - t1
        docs = []
        for s in sorted(res["samples"][name], key=lambda s: s["doc_id"]):
            reqs = [tuple(a) for a in s["arguments"]]
            lls = [float(r[0][0]) for r in s["resps"]]
            ntok = [len(lm._encode_pair(c, k)[1]) for c, k in reqs]  # the harness's own split
            gold = s["target"]
            if not isinstance(gold, int):  # WinoGrande logs the continuation; its gold is the answer
                gold = int(gold) if str(gold).isdigit() else {"1": 0, "2": 1}[s["doc"]["answer"]]
            docs.append({"doc_id": s["doc_id"], "target": gold, "lls": lls, "ntok": ntok,
                         "requests": reqs, "acc": s["acc"], "acc_norm": s["acc_norm"]})
        r = res["results"][name]
        out["tasks"][t] = {"acc": r["acc,none"], "acc_norm": r["acc_norm,none"], "wall_s": wall, "docs": docs}
    return out


def side_prefheads(args: argparse.Namespace) -> dict[str, Any]:
    """Score the same rows with prefheads (inside .venv)."""
    from prefheads import tasks as T
    from prefheads.eval.lmeval import score_lmeval
    from prefheads.model import PreferenceModel

    t0 = time.perf_counter()
    pm = PreferenceModel.from_pretrained(args.model)
    import torch

    out: dict[str, Any] = {"load_s": time.perf_counter() - t0, "tasks": {}, "threads": torch.get_num_threads(),
                           "torch": torch.__version__}
    for t in args.tasks:
        t1 = time.perf_counter()
        exs = T.load_examples(t, data_dir=args.data, limit=args.limit, variant="lm-eval")
        s = score_lmeval(pm, exs)
        wall = time.perf_counter() - t1
        docs = [{"id": ex.id, "label": ex.label, "lls": s.logprob_sum[j], "ntok": s.n_tokens[j],
                 "requests": list(zip(ex.meta["lmeval"]["contexts"], ex.meta["lmeval"]["continuations"]))}
                for j, ex in enumerate(exs)]
        out["tasks"][t] = {**{k: v for k, v in s.summary().items()}, "wall_s": wall, "docs": docs}
    return out


# ---------------------------------------------------------------------------- comparison


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def compare(h: dict[str, Any], p: dict[str, Any], tasks: list[str],
            cli: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows of the parity table and its markdown (``cli``: results of ``prefheads eval --template lm-eval``)."""
    rows = []
    for t in tasks:
        hd, pd = h["tasks"][t]["docs"], p["tasks"][t]["docs"]
        assert len(hd) == len(pd), f"{t}: {len(hd)} harness docs vs {len(pd)} prefheads docs"
        h_mean = sum(_argmax([l / n for l, n in zip(d["lls"], d["ntok"])]) == d["target"] for d in hd) / len(hd)
        dll = max(abs(a - b) for x, y in zip(hd, pd) for a, b in zip(x["lls"], y["lls"]))
        req_diff = sum(tuple(map(tuple, x["requests"])) != tuple(map(tuple, y["requests"])) for x, y in zip(hd, pd))
        tok_diff = sum(x["ntok"] != y["ntok"] for x, y in zip(hd, pd))
        hv = {"acc": h["tasks"][t]["acc"], "acc_norm": h["tasks"][t]["acc_norm"], "mean": h_mean}
        for m in METRICS:
            cv = cli["tasks"][t]["methods"][f"lm-eval:{m}"]["metrics"]["accuracy"] if cli else float("nan")
            rows.append({"task": t, "metric": m, "n": len(pd), "harness": 100 * hv[m],
                         "prefheads": 100 * p["tasks"][t][m], "cli": 100 * cv,
                         "diff": 100 * (p["tasks"][t][m] - hv[m]), "max_dll": dll, "request_mismatch": req_diff,
                         "token_mismatch": tok_diff, "harness_s": h["tasks"][t]["wall_s"],
                         "prefheads_s": p["tasks"][t]["wall_s"]})
    lines = ["| task | metric | n | harness | prefheads | `prefheads eval` | diff (pts) | max abs Δ log-prob | harness s | prefheads s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['n']} | {r['harness']:.1f} | {r['prefheads']:.1f} | {r['cli']:.1f} | "
                     f"{r['diff']:+.1f} | {r['max_dll']:.1e} | {r['harness_s']:.1f} | {r['prefheads_s']:.1f} |")
    th = sum(h["tasks"][t]["wall_s"] for t in tasks)
    tp = sum(p["tasks"][t]["wall_s"] for t in tasks)
    mism = {t: (rows[3 * i]["request_mismatch"], rows[3 * i]["token_mismatch"]) for i, t in enumerate(tasks)}
    lines.append("")
    lines.append(f"Total scoring wall time: harness {th:.1f} s, prefheads {tp:.1f} s ({th / tp:.2f}x); model load "
                 f"{h['load_s']:.1f} s / {p['load_s']:.1f} s. Examples whose request strings / continuation "
                 f"token counts differ between the sides: {mism}.")
    return rows, "\n".join(lines)


def _templates(args: argparse.Namespace) -> None:
    """ARC-Easy: paper chat template vs lm-eval template (chat path and raw harness scoring)."""
    from prefheads import tasks as T
    from prefheads.eval.lmeval import score_lmeval
    from prefheads.eval.metrics import accuracy, choose
    from prefheads.model import PreferenceModel

    pm = PreferenceModel.from_pretrained(args.model)
    out = {}
    for variant in ("paper", "lm-eval"):
        exs = T.load_examples("arc_easy", data_dir=args.data, limit=args.limit, variant=variant)
        t0 = time.perf_counter()
        f = pm.features([e.prompt for e in exs for _ in e.choices], [c for e in exs for c in e.choices],
                        logprobs=True)
        mean = (f.logprob_sum / f.n_tokens.clamp_min(1)).tolist()
        table, i = [], 0
        for e in exs:
            table.append(mean[i: i + len(e.choices)])
            i += len(e.choices)
        out[f"{variant} (chat template, mean log-prob)"] = (accuracy(choose(table)[0], [e.label for e in exs]),
                                                          time.perf_counter() - t0)
        if variant == "lm-eval":
            s = score_lmeval(pm, exs)
            for m in METRICS:
                out[f"lm-eval (raw harness request, {m})"] = (s.summary()[m], s.seconds)
    print(f"ARC-Easy test, first {args.limit} questions, SmolLM2-135M-Instruct, log-prob scoring:")
    for k, (acc, secs) in out.items():
        print(f"  {k:45s} {100 * acc:5.1f}%   ({secs:.1f} s)")


def _setup() -> None:
    if args.run in ("all", "harness") and not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, PINS[0]], check=True)  # CPU torch first (a local wheel where there is one)
    subprocess.run([*pip, *PINS[1:]], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="prefheads task names, comma-separated")
    ap.add_argument("--limit", type=int, default=100, help="first N rows of each task (both sides)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder laid out like shared/data")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled SmolLM2, converted)")
    ap.add_argument("--batch-size", type=int, default=8, help="harness batch size")
    ap.add_argument("--out", default=str(ROOT / "runs" / "lmeval_parity"), help="work / result folder")
    ap.add_argument("--templates", action="store_true", help="ARC-Easy paper vs lm-eval template instead")
    ap.add_argument("--setup", action="store_true", help="create bench/.venv-lmeval and exit")
    ap.add_argument("--run", choices=["all", "harness", "prefheads", "compare"], default="all",
                    help="run one side only (each under its own lock), or only compare the saved sides")
    ap.add_argument("--side", choices=["harness", "prefheads"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.setup:
        return _setup()
    if args.side:  # a child process: run one side, write its JSON
        fn = side_harness if args.side == "harness" else side_prefheads
        res = fn(args)
        Path(args.work, f"{args.side}.json").write_text(json.dumps(res))
        return
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from prefheads.loading import resolve_base

        args.model = resolve_base(None)[0]
    if args.templates:
        return _templates(args)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        ap.error(f"no harness parity task for {unknown}; known: {sorted(TASKS)}")
    if args.run in ("all", "harness") and not (VENV / "bin" / "python").exists():
        ap.error(f"{VENV} is missing: run `python bench/lmeval_parity.py --setup` first")
    work = Path(args.out)
    (work / "data").mkdir(parents=True, exist_ok=True)
    for t in args.tasks:
        with open(work / "data" / f"{TASKS[t][0]}.jsonl", "w", encoding="utf-8") as f:
            for r in hub_rows(t, Path(args.data), args.limit):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-datasets")}
    common = ["--tasks", ",".join(args.tasks), "--limit", str(args.limit), "--data", args.data,
              "--model", args.model, "--batch-size", str(args.batch_size), "--work", str(work)]
    for side, py in (("harness", VENV / "bin" / "python"), ("prefheads", Path(sys.executable))):
        if args.run not in ("all", side):
            continue
        print(f"[{side}] running ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([str(py), __file__, "--side", side, *common], check=True, env=env, cwd=str(ROOT))
        print(f"[{side}] done in {time.perf_counter() - t0:.1f} s (process wall, imports included)", flush=True)
    if args.run in ("all", "prefheads"):
        # the same rows through the user's command: prefheads eval --template lm-eval
        print("[prefheads eval --template lm-eval] running ...", flush=True)
        (work / "cli.json").unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "prefheads.cli", "eval", "--base", args.model, "--task",
                        ",".join(args.tasks), "--data-dir", args.data, "--template", "lm-eval", "--max-eval",
                        str(args.limit), "--subset", "first", "--no-progress", "--out", str(work / "cli.json")],
                       check=True, env=env, cwd=str(ROOT))
    if args.run in ("harness", "prefheads"):
        return
    h = json.loads((work / "harness.json").read_text())
    p = json.loads((work / "prefheads.json").read_text())
    cli = json.loads((work / "cli.json").read_text()) if (work / "cli.json").exists() else None
    if cli is not None and (cli["config"]["max_eval"] != args.limit or not set(args.tasks) <= set(cli["tasks"])):
        cli = None  # from another run: not comparable
    rows, md = compare(h, p, args.tasks, cli)
    head = (f"lm-evaluation-harness {h['version']} vs prefheads, model {Path(args.model).name}, "
            f"first {args.limit} rows per task, CPU fp32, harness batch size {args.batch_size}, torch "
            f"{h['torch']} / {p['torch']} with {h['threads']} / {p['threads']} threads")
    print(head + "\n\n" + md)
    (work / "parity.md").write_text(head + "\n\n" + md + "\n")
    (work / "parity.json").write_text(json.dumps({"head": head, "rows": rows}, indent=1))
    worst = max(abs(r["diff"]) for r in rows)
    verdict = "within" if worst <= 0.5 else "OUTSIDE"
    print(f"\nlargest |difference|: {worst:.2f} points ({verdict} the 0.5-point target)")


if __name__ == "__main__":
    main()
