"""Bulk scoring: rows/s on one and on two processes, and a kill -9 + ``--resume`` check.

It writes ``--rows`` real HH-RLHF helpful-base test pairs (bundled slice) as
``{"id", "prompt", "chosen", "rejected"}`` rows, saves a head folder for the bundled SmolLM2 (a
seeded SwiGLU head and an identity head), then runs the user's commands:

1. ``prefheads score --input rows.jsonl --out one.jsonl`` (one process);
2. the same under ``accelerate launch --multi_gpu --num_processes 2`` (two CPU processes on a
   machine without GPUs; each scores every other row, the first merges the parts);
3. the one-process command again, killed with SIGKILL once a third of the rows are written, then
   rerun with ``--resume``; its output must be byte-identical to run 1's.

It prints rows/s (scoring time, and wall time with start-up) and the largest reward difference
between the one- and two-process outputs.

    .venv/bin/python bench/bulk_score.py --rows 48
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402


def flat(rec: dict) -> list[float]:
    return [x for h in sorted(rec["rewards"]) for x in (lambda v: [v["chosen"], v["rejected"]])(rec["rewards"][h])]


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t, r.stdout


def scoring_seconds(stdout: str) -> float:
    return float(re.search(r"in ([\d.]+)s", stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--batch-rows", type=int, default=8)
    args = ap.parse_args()

    from prefheads import PreferenceModel, tasks

    work = Path(tempfile.mkdtemp(prefix="prefheads-bulk-"))
    pairs = list(tasks.load_pairs("hh_rlhf", split="eval", data_dir="bundled", limit=args.rows + 1))[: args.rows]
    with open(work / "rows.jsonl", "w") as f:
        for p in pairs:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    pm = PreferenceModel.from_pretrained()
    torch.manual_seed(0)
    pm.add_head("helpful", "swiglu")
    pm.add_head("probe", "identity", activate=False)
    pm.save_heads(work / "heads")
    tokens = sum(len(it.ids) for p in pairs for it in pm.encode([p.prompt] * 2, [p.chosen, p.rejected]))
    del pm
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    score = [sys.executable, "-m", "prefheads.cli", "score", "--heads", str(work / "heads"), "--input",
             str(work / "rows.jsonl"), "--batch-rows", str(args.batch_rows), "--no-progress"]
    rows = []

    wall, out = run(score + ["--out", str(work / "one.jsonl")], env)
    rows.append({"run": "1 process", "rows": args.rows, "scoring s": scoring_seconds(out), "wall s": wall})
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "prefheads.cli",
              *score[3:], "--out", str(work / "two.jsonl")]
    wall, out = run(launch, env)
    rows.append({"run": "2 processes (accelerate)", "rows": args.rows, "scoring s": scoring_seconds(out), "wall s": wall})
    for r in rows:
        r["rows/s (scoring)"] = r["rows"] / r["scoring s"]
        r["rows/s (wall)"] = r["rows"] / r["wall s"]
    one = [json.loads(x) for x in (work / "one.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (work / "two.jsonl").read_text().splitlines()]
    same_ids = [a["id"] for a in one] == [b["id"] for b in two]
    diff = max(max(abs(x - y) for x, y in zip(flat(a), flat(b))) for a, b in zip(one, two))

    # kill -9 a third of the way, then --resume
    out3 = work / "killed.jsonl"
    proc = subprocess.Popen(score + ["--out", str(out3)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not (out3.exists() and out3.read_bytes().count(b"\n") >= args.rows // 3):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = out3.read_bytes().count(b"\n")
    wall, out = run(score + ["--out", str(out3), "--resume"], env)
    identical = out3.read_bytes() == (work / "one.jsonl").read_bytes()

    print(f"\nmachine: {machine()}; load average {os.getloadavg()[0]:.1f}; SmolLM2-135M-Instruct fp32; "
          f"{args.rows} HH-RLHF pairs ({tokens} tokens, chosen + rejected), --batch-rows {args.batch_rows}; work in {work}")
    print(table(rows, ["run", "rows", "scoring s", "wall s", "rows/s (scoring)", "rows/s (wall)"]))
    print(f"two processes vs one: same ids in the same order {same_ids}; max |Δ reward| {diff:.1e}")
    print(f"kill -9 after {at_kill} of {args.rows} rows written; --resume: {out.strip()}; "
          f"byte-identical to the uninterrupted run: {identical}")
    if not (same_ids and diff <= 1e-4 and identical):
        sys.exit("FAILED")


if __name__ == "__main__":
    main()
