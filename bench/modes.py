"""Each training mode on SmolLM2 with real SST-2: held-out pair accuracy, wall time, peak memory.

Every mode runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its own.
Held-out pairs come from the SST-2 dev set (never seen in training). ``lora+probe`` and
``full+probe`` first fit the frozen probe (seconds, on cached features) and start the LoRA / full
run from it (``--init-head``: linear probing, then fine-tuning); ``train_s`` includes the probe.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402

SETTINGS = {
    "frozen": {"epochs": 10, "lr": 1e-3},
    "lora": {"epochs": 2, "lr": 5e-4, "head_lr": 1e-3},
    "full": {"epochs": 2, "lr": 2e-5, "head_lr": 1e-3, "prior": 0.5},
}
# "<mode>+probe": the frozen probe first (cached features), then <mode> starts from it (--init-head).
# Lower rates and a longer warmup: Adam's first steps are sign-like (every weight moves by ≈ lr),
# which on a 36-step run knocks a good probe off at once with the rates above.
SETTINGS["lora+probe"] = {"epochs": 2, "lr": 1e-4, "head_lr": 1e-4, "warmup_ratio": 0.3}
SETTINGS["full+probe"] = {"epochs": 2, "lr": 5e-6, "head_lr": 1e-4, "warmup_ratio": 0.3, "prior": 0.5}


def one(mode: str, n_train: int, n_eval: int) -> dict:
    import torch

    from prefheads import PreferenceModel, tasks
    from prefheads.eval import score_examples, summarize
    from prefheads.training import FitConfig, fit

    torch.manual_seed(0)
    pm = PreferenceModel.from_pretrained()
    out = tempfile.mkdtemp()
    t0 = time.perf_counter()
    common = dict(task="glue/sst2", data_dir=str(DATA), max_train=n_train, batch_size=8,
                  cache_dir=str(Path(out) / "cache"))
    base_mode, _, probe = mode.partition("+")
    init = None
    if probe:
        fit(FitConfig(mode="frozen", out=str(Path(out) / "probe"), **common, **SETTINGS["frozen"]), pm=pm,
            progress=False)
        init = str(Path(out) / "probe")
    res = fit(FitConfig(mode=base_mode, out=out, init_head=init, **common, **SETTINGS[mode]), pm=pm, progress=False)
    train_s = time.perf_counter() - t0
    dev = tasks.load_examples("glue/sst2", split="eval", data_dir=DATA, limit=n_eval, shuffle=True, seed=0)
    s = summarize(score_examples(pm, dev))
    dph = s[f"dph:{res.head_name}"]
    return {"mode": mode, "train_examples": res.n_train, "epochs": SETTINGS[mode]["epochs"], "train_s": train_s,
            "val_pair_acc": res.best["val_pair_accuracy"], "dev_acc_dph": dph["accuracy"],
            "dev_pred_dph": dph["predicted"], "dev_acc_logprob": s["logprob"]["accuracy"],
            "dev_pred_logprob": s["logprob"]["predicted"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="frozen,lora,full,lora+probe,full+probe")
    ap.add_argument("--n-train", type=int, default=160)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.n_train, args.n_eval)))
        return
    rows = []
    for mode in args.modes.split(","):
        r = subprocess.run([sys.executable, __file__, "--one", mode, "--n-train", str(args.n_train),
                            "--n-eval", str(args.n_eval)], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"{mode} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(line[0][7:]))
        print(rows[-1], flush=True)
    print(machine())
    print(table(rows, ["mode", "train_examples", "epochs", "train_s", "val_pair_acc", "dev_acc_dph",
                       "dev_pred_dph", "dev_acc_logprob", "dev_pred_logprob", "peak_rss_gib"]))


if __name__ == "__main__":
    main()
