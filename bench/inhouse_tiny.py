"""The tiny in-house pipeline (recipes/inhouse-tiny.yaml) end to end: how good is its final head?

The unit test (tests/test_recipes.py) checks that the three stages run and feed each other;
how well a 160-step head of a tiny random model does depends on floating-point details that
differ across CPUs, so that figure is measured here, over several seeds, and recorded in
docs/benchmarks.md. Prints OpenBookQA test accuracy (500 questions) of the DPH head and of
log-prob, with chance, the majority-label rate and each method's predicted-label distribution.

    .venv/bin/python bench/inhouse_tiny.py --seeds 0,1,2 [--check 0.27]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one(seed: int, out: Path) -> dict:
    import numpy as np

    from prefheads import tasks
    from prefheads.recipes import load_config, run

    cfg = load_config(ROOT / "recipes/inhouse-tiny.yaml", [f"out={out}", f"data_dir={DATA}", f"seed={seed}"])
    t0 = time.perf_counter()
    run(cfg)
    res = json.loads((Path(cfg.out) / "results.json").read_text())["tasks"]["openbookqa"]
    exs = tasks.load_examples("openbookqa", split="eval", data_dir=DATA)
    majority = max(np.bincount([e.label for e in exs])) / len(exs)
    m = res["methods"]
    return {"seed": seed, "n": res["n"], "dph_acc": m["dph:general"]["metrics"]["accuracy"],
            "logprob_acc": m["logprob"]["metrics"]["accuracy"], "majority": majority,
            "dph_predicted": m["dph:general"]["predicted"], "logprob_predicted": m["logprob"]["predicted"],
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated recipe seeds")
    ap.add_argument("--check", type=float, default=None,
                    help="exit 1 unless the mean DPH accuracy over the seeds reaches this")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in [int(x) for x in args.seeds.split(",")]:
            rows.append(one(s, Path(tmp) / f"run{s}"))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows, ["seed", "n", "dph_acc", "logprob_acc", "majority", "dph_predicted", "seconds"]))
    mean = sum(r["dph_acc"] for r in rows) / len(rows)
    print(f"mean DPH accuracy {100 * mean:.1f}% over {len(rows)} seed(s) (chance 25%, "
          f"majority {100 * rows[0]['majority']:.1f}%)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.check is not None and mean < args.check:
        print(f"FAIL: mean DPH accuracy {mean:.3f} < {args.check}")
        sys.exit(1)


if __name__ == "__main__":
    main()
