"""Many candidates for one prompt: peak memory and time of shared-prefix scoring, bounded vs one batch.

Scoring a large candidate pool for a single prompt (best-of-n reranking, bulk files where many
rows share a prompt) puts every candidate in one prompt group. The shared-prefix engine splits
such a group into pieces that fit ``pm.max_tokens`` padded tokens per forward (4,096 by default);
with the bound lifted (``max_tokens`` = 10^9: the whole group in one suffix forward, what the
engine did before it split groups) memory grows with the pool. Each mode runs in its own
subprocess so its peak resident memory (``ru_maxrss``) is its own; both score the same
candidates with the same fresh head and the script checks that their rewards and log-probs agree.

Candidates: the first ``--n`` replies (chosen and rejected; the 397 distinct ones repeat where
``--n`` is larger) of the bundled HH-RLHF helpful slice, all answering the first pair's prompt,
on the bundled SmolLM2-135M-Instruct.

    flock /tmp/prefheads-heavy.lock .venv/bin/python bench/one_prompt.py --n 600
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

UNBOUNDED = 10**9
TOL = 1e-4


def candidates(n: int) -> tuple[list[dict], list[str]]:
    """The first pair's prompt and ``n`` bundled replies (the 397 distinct ones, repeated as needed)."""
    from prefheads import tasks

    pairs = tasks.load_pairs("hh_rlhf", split="test", data_dir="bundled")
    seen: dict[str, None] = {}
    for p in pairs:
        for c in (p.chosen, p.rejected):
            seen.setdefault(c)
    distinct = list(seen)
    return pairs[0].prompt, (distinct * (n // len(distinct) + 1))[:n]


def child(n: int, max_tokens: int, out: Path) -> None:
    """Score the pool once with ``max_tokens`` and write rewards, log-probs, time and peak memory."""
    import torch

    from prefheads import PreferenceModel

    torch.manual_seed(0)
    pm = PreferenceModel.from_pretrained(None)
    pm.add_head("h", "swiglu", init_std=0.5)  # rewards of order 1: the comparison means something
    prompt, replies = candidates(n)
    pm.max_tokens = max_tokens
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    f = pm.features([prompt] * n, replies, logprobs=True, shared_prefix=True)
    rewards = pm.heads["h"](f.states[pm.heads["h"].config.layer]).tolist()
    secs = time.perf_counter() - t0
    out.write_text(json.dumps({"rewards": rewards, "logprob": f.logprob_sum.tolist(), "s": secs,
                               "rss_loaded_mb": rss0 / 1024,
                               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=600, help="candidates for the one prompt")
    ap.add_argument("--child", nargs=2, metavar=("MAX_TOKENS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if args.child:
        child(args.n, int(args.child[0]), Path(args.child[1]))
        return
    import tempfile

    import torch

    rows, got = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, mt in (("pieces (max_tokens 4096)", 4096), ("one batch (unbounded)", UNBOUNDED)):
            out = Path(tmp) / f"{mt}.json"
            subprocess.run([sys.executable, __file__, "--n", str(args.n), "--child", str(mt), str(out)], check=True)
            got[name] = r = json.loads(out.read_text())
            rows.append({"mode": name, "candidates": args.n, "seconds": round(r["s"], 1),
                         "peak RSS (MB)": round(r["peak_mb"]), "peak before scoring (MB)": round(r["rss_loaded_mb"])})
    a, b = got.values()
    for key in ("rewards", "logprob"):
        diff = (torch.tensor(a[key]) - torch.tensor(b[key])).abs().max().item()
        rows[1][f"max |Δ {key}|"] = f"{diff:.1e}"
        if diff > TOL * max(1.0, torch.tensor(b[key]).abs().max().item()):
            raise SystemExit(f"{key} differ by {diff:.2e} between the two modes")
    print(machine())
    print(table(rows, list(rows[1])))
    print(f"peak memory ratio (one batch / pieces): {b['peak_mb'] / a['peak_mb']:.2f}x; "
          f"time ratio: {b['s'] / a['s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
