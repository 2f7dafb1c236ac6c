"""Frozen-probe training: prefheads' feature cache vs re-running the backbone every step.

Prints, on SmolLM2 and real SST-2 training pairs: the time of epoch 1 (backbone pass + head
epoch) vs each later epoch (head only, from the cache) and their ratio; the time to train the
same head to the same number of epochs when the backbone is re-run every step (the reference
code's way); and the time of three more task heads on the cached features vs one backbone pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="SST-2 training examples")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()

    from prefheads import PreferenceModel, tasks
    from prefheads.training import FitConfig, fit
    from prefheads.training.data import from_examples
    from prefheads.training.loop import _epoch_pairs

    pm = PreferenceModel.from_pretrained()
    ex = tasks.load_examples("glue/sst2", split="train", data_dir=DATA, limit=args.n, shuffle=True, seed=0)
    cands = from_examples(ex)
    cache = Path(tempfile.mkdtemp())
    base = dict(task="glue/sst2", data_dir=str(DATA), epochs=args.epochs, batch_size=16, cache_dir=str(cache),
                val_fraction=0.1, seed=0)

    t0 = time.perf_counter()
    cold = fit(FitConfig(out=str(cache / "cold"), **base), pm=pm, progress=False, cands=cands)
    cold_s = time.perf_counter() - t0
    head_epochs = [h["seconds"] for h in cold.history]
    epoch1 = cold.setup_seconds + head_epochs[0]
    later = sum(head_epochs[1:]) / max(1, len(head_epochs) - 1)

    # the reference code's way: the backbone runs again for every batch of every epoch
    head = pm.add_head("rerun", "swiglu", dropout=0.0)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, betas=(0.9, 0.95))
    from prefheads.losses import separable_dph_loss

    t1 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        pairs = _epoch_pairs(cands.groups, 0, epoch)
        for s in range(0, len(pairs), 16):
            rows = pairs[s: s + 16].reshape(-1).tolist()
            f = pm.features([cands.prompts[i] for i in rows], [cands.completions[i] for i in rows]).states[-1]
            r = head(f).view(-1, 2)
            loss, _ = separable_dph_loss(r[:, 0], r[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
    rerun_s = time.perf_counter() - t1

    # more task heads on the same cached features
    more = []
    for pooler in ("identity", "bert", "swiglu"):
        t2 = time.perf_counter()
        r = fit(FitConfig(out=str(cache / pooler), pooler=pooler, head_name=pooler, **base), pm=pm,
                progress=False, cands=cands)
        more.append({"head": pooler, "seconds": time.perf_counter() - t2, "cache_hit": r.cache_hit,
                     "val_pair_accuracy": r.best["val_pair_accuracy"]})

    rows = [
        {"what": "epoch 1 (backbone pass + head epoch)", "seconds": epoch1},
        {"what": "each later epoch (head only, cached)", "seconds": later},
        {"what": "ratio later / first epoch", "seconds": later / epoch1},
        {"what": f"{args.epochs} epochs, prefheads (cache cold)", "seconds": cold_s},
        {"what": f"{args.epochs} epochs, backbone re-run every step", "seconds": rerun_s},
        {"what": "speed-up of the cache", "seconds": rerun_s / cold_s},
    ] + [{"what": f"one more head ({m['head']}) on cached features, hit={m['cache_hit']}", "seconds": m["seconds"]}
         for m in more]
    print(machine())
    print(f"SST-2 train: {len(cands)} examples, {len(cands.completions)} candidates; "
          f"val pair accuracy (swiglu) {cold.best['val_pair_accuracy']:.3f}")
    print(table(rows, ["what", "seconds"]))
    print(json.dumps({"epoch1": epoch1, "later": later, "cold": cold_s, "rerun": rerun_s, "more": more}))


if __name__ == "__main__":
    main()
