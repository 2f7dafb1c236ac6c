"""float32, 8-bit and 4-bit NF4 (bitsandbytes) SmolLM2 side by side on real SST-2.

    .venv/bin/python bench/quant.py --n-train 200 --n-eval 200
    .venv/bin/python bench/quant.py --similarity 24     # features and log-probs against float32

Each precision runs in its own subprocess (one thread), so its peak resident memory
(``ru_maxrss``) is its own: load time, the weights' memory (``get_memory_footprint``), resident
memory after loading and at peak, scoring speed (candidate tokens per second of a features +
log-probs pass over the training candidates, the pass a frozen fit makes), and the accuracy on
SST-2 dev rows of two frozen heads (the paper's SwiGLU head, a linear one) trained on that
precision's own features and of log-prob scoring (the quantisation's accuracy cost). Every run
trains the same recipes on the same seeded rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import ctypes
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, table  # noqa: E402

PRECISIONS = {"float32": {}, "8-bit": {"load_in_8bit": True}, "4-bit NF4": {"load_in_4bit": True}}
# two head recipes on the final state of the frozen backbone, every option given (the fit defaults
# may change): the paper's SwiGLU head (as bench/modes.py trains it) and a linear one; no LM score
HEAD = dict(mode="frozen", layer="-1", lm_score="none", objective="separable", template="paper", epochs=10,
            batch_size=8, lr=1e-3, seed=0)
POOLERS = {"swiglu": "swiglu", "linear": "identity"}


def one(name: str, n_train: int, n_eval: int) -> dict:
    import psutil
    import torch

    torch.set_num_threads(1)
    from prefheads import PreferenceModel, tasks
    from prefheads.eval import score_examples, summarize
    from prefheads.loading import quantization_kwargs
    from prefheads.training import FitConfig, fit
    from prefheads.training.cache import FeatureCache, cached_features
    from prefheads.training.fit import training_candidates
    from prefheads.training.passes import encode_candidates

    flags = PRECISIONS[name]
    t0 = time.perf_counter()
    pm = PreferenceModel.from_pretrained(None, **quantization_kwargs(**flags))
    load_s = time.perf_counter() - t0
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what loading freed goes back to the system (glibc)
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    out = Path(tempfile.mkdtemp())
    cfg = FitConfig(task="glue/sst2", data_dir=str(DATA), max_train=n_train, out=str(out / "swiglu"),
                    cache_dir=str(out / "cache"), pooler="swiglu", **flags, **HEAD)
    cands = training_candidates(cfg)
    items, _ = encode_candidates(pm, cands, cfg.truncation)
    tokens = sum(len(it.ids) for it in items)
    t1 = time.perf_counter()  # the frozen fit's backbone pass, written to the cache the fit reads
    with pm.reading(None):
        cached_features(pm, cands.prompts, cands.completions, [-1], FeatureCache(cfg.cache_dir), items=items,
                        logprobs=True)
    pass_s = time.perf_counter() - t1
    for head, pooler in POOLERS.items():
        res = fit(dataclasses.replace(cfg, pooler=pooler, head_name=head, out=str(out / head)), pm=pm,
                  progress=False, cands=cands)
        assert res.cache_hit, "the fit should read the features of the timed pass"
    dev = tasks.load_examples("glue/sst2", split="eval", data_dir=DATA, limit=n_eval, shuffle=True, seed=0)
    s = summarize(score_examples(pm, dev))  # one pass: log-prob and both heads
    return {"precision": name, "load_s": round(load_s, 1),
            "weights_mb": round(pm.backbone.get_memory_footprint() / 2**20),
            "rss_loaded_mb": round(rss_loaded), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "tokens": tokens, "tokens_per_s": round(tokens / pass_s), "train_examples": res.n_train, "dev_n": len(dev),
            **{f"dev_acc_{h}": round(s[f"dph:{h}"]["accuracy"], 3) for h in POOLERS},
            "dev_acc_logprob": round(s["logprob"]["accuracy"], 3),
            **{f"dev_pred_{h}": s[f"dph:{h}"]["predicted"] for h in POOLERS},
            "dev_pred_logprob": s["logprob"]["predicted"]}


def similarity(n_eval: int) -> None:
    """How close each quantisation's features and log-probs are to float32's, on ``n_eval`` SST-2 dev
    rows: cosine of the reward-token states, and of the difference between an example's two
    candidates' states (what a head separates), and the correlation of the summed log-probs."""
    import torch

    torch.set_num_threads(1)
    from prefheads import PreferenceModel, tasks
    from prefheads.loading import quantization_kwargs

    exs = tasks.load_examples("glue/sst2", split="eval", data_dir=DATA, limit=n_eval, shuffle=True, seed=0)
    prompts, comps = [e.prompt for e in exs for _ in e.choices], [c for e in exs for c in e.choices]
    feats = {}
    for name, flags in PRECISIONS.items():
        pm = PreferenceModel.from_pretrained(None, **quantization_kwargs(**flags))
        feats[name] = pm.features(prompts, comps, layers=[-1, 15], logprobs=True)
        del pm
    ref = feats["float32"]
    cos = torch.nn.functional.cosine_similarity
    rows = []
    for name in list(PRECISIONS)[1:]:
        f = feats[name]
        row = {"precision": name, "logprob_corr": round(float(torch.corrcoef(torch.stack([ref.logprob_sum, f.logprob_sum]))[0, 1]), 3)}
        for l in (-1, 15):
            a, b = ref.states[l], f.states[l]
            row[f"cos_layer{l}"] = round(float(cos(a, b, dim=-1).mean()), 3)
            row[f"pair_diff_cos_layer{l}"] = round(float(cos(a[0::2] - a[1::2], b[0::2] - b[1::2], dim=-1).mean()), 3)
        rows.append(row)
    print(f"{len(exs)} SST-2 dev rows, {len(comps)} candidates; means over rows")
    print(table(rows, list(rows[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--n-train", type=int, default=200, help="SST-2 training rows (seeded subset)")
    ap.add_argument("--n-eval", type=int, default=200, help="SST-2 dev rows (seeded subset)")
    ap.add_argument("--similarity", type=int, metavar="N", help="instead: how close the quantized features and "
                    "log-probs of N dev rows are to float32's (one process)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.similarity:
        similarity(args.similarity)
        return
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.n_train, args.n_eval)))
        return
    rows = []
    for name in args.precisions.split(","):
        r = subprocess.run([sys.executable, __file__, "--one", name, "--n-train", str(args.n_train),
                            "--n-eval", str(args.n_eval)], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(line[0][7:]))
        print(rows[-1], flush=True)
    print(machine())
    print(table(rows, ["precision", "load_s", "weights_mb", "rss_loaded_mb", "peak_rss_mb", "tokens_per_s",
                       "train_examples", *(f"dev_acc_{h}" for h in POOLERS), "dev_acc_logprob",
                       *(f"dev_pred_{h}" for h in POOLERS), "dev_pred_logprob"]))


if __name__ == "__main__":
    main()
