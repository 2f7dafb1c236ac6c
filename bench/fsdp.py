"""Sharded training (torch FSDP2, gloo) on SmolLM2: 2 CPU processes against 1, same global batch.

    .venv/bin/python bench/fsdp.py --modes full,lora --n-train 48

Each run is one ``prefheads fit`` on real SST-2 rows: one process (``python -m prefheads.cli``)
or two (``torchrun --nproc-per-node 2 ... --fsdp``), one thread each. Reported: the peak resident
memory of the largest process of the run (``ru_maxrss`` over the launcher's children), seconds per
optimizer step (the epoch's training time over its steps; no validation split), and the largest
difference between the two runs' saved tensors (head, and the backbone in full mode or the adapter
in lora mode).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# every option given (the fit defaults may change); no dropout and whole-sequence encoding, so the
# two layouts compute the same maths; no validation split, so an epoch is its training steps
COMMON = ["--task", "glue/sst2", "--pooler", "identity", "--layer=-1", "--lm-score", "none", "--objective",
          "separable", "--template", "paper", "--dropout", "0", "--lora-dropout", "0", "--no-shared-prefix",
          "--val-fraction", "0", "--epochs", "1", "--batch-size", "8", "--seed", "0", "--overwrite"]
MODES = {"full": ["--mode", "full", "--lr", "1e-5", "--head-lr", "1e-3"],
         "lora": ["--mode", "lora", "--lr", "5e-4", "--head-lr", "1e-3"]}


def run(mode: str, procs: int, n_train: int, out: Path) -> dict:
    fit = ["-m", "prefheads.cli", "fit", "--data-dir", str(DATA), "--max-train", str(n_train), "--out", str(out),
           *COMMON, *MODES[mode]]
    cmd = [sys.executable, *fit] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), *fit, "--fsdp"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # a fresh launcher per run, so ru_maxrss of its children is this run's alone
    probe = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
             "print(json.dumps({'rc': r.returncode, 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise SystemExit(f"{mode} x{procs} failed:\n{r.stderr[-3000:]}")
    hist = json.loads((out / "history.json").read_text())
    steps = -(-n_train // 8)
    return {"mode": mode, "processes": procs, "steps": steps, "s_per_step": round(hist[0]["seconds"] / steps, 2),
            "peak_rss_mb": round(info["peak_kb"] / 1024), "wall_s": round(wall, 1)}


def saved(out: Path) -> dict:
    from safetensors.torch import load_file

    heads = json.loads((out / "heads.json").read_text())["heads"]
    got = {f"head.{k}": v for e in heads.values() for k, v in load_file(str(out / e["file"])).items()}
    for sub in ("backbone/model.safetensors", "adapter/adapter_model.safetensors"):
        if (out / sub).is_file():
            got.update({f"{sub}:{k}": v for k, v in load_file(str(out / sub)).items()})
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--n-train", type=int, default=48, help="SST-2 training rows (a multiple of 8: whole batches)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for mode in args.modes.split(","):
        outs = {}
        for procs in (1, 2):
            outs[procs] = tmp / f"{mode}-{procs}"
            rows.append(run(mode, procs, args.n_train, outs[procs]))
        a, b = saved(outs[1]), saved(outs[2])
        rows[-1]["max_abs_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        for r in rows[-2:]:
            print(r, flush=True)
    print(machine())
    print(table(rows, ["mode", "processes", "steps", "s_per_step", "peak_rss_mb", "wall_s", "max_abs_diff"]))


if __name__ == "__main__":
    main()
