"""Best-of-N latency per prompt: sampling N completions vs scoring them with a head.

On SmolLM2 with a fresh SwiGLU head and real HH-RLHF prompts (bundled slice), for N = 1, 4, 8,
16: the time to sample N completions (one batched ``generate``), the time to score them
(prompt encoded once, shared prefix), and the total per prompt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--ns", default="1,4,8,16")
    args = ap.parse_args()

    from prefheads import PreferenceModel, tasks
    from prefheads.infer.rerank import GenerationSettings, generate_candidates, rerank_candidates

    pm = PreferenceModel.from_pretrained()
    pm.add_head("h", "swiglu")
    pairs = tasks.load_pairs("hh_rlhf", split="eval", data_dir="bundled", limit=args.prompts)
    prompts = [p.prompt for p in pairs]
    rows = []
    for n in [int(x) for x in args.ns.split(",")]:
        gen_s = score_s = 0.0
        toks = 0
        for prompt in prompts:
            t = time.perf_counter()
            gens = generate_candidates(pm, prompt, n=n, settings=GenerationSettings(max_new_tokens=args.max_new_tokens,
                                                                                   seed=0))
            gen_s += time.perf_counter() - t
            texts = [g.text for g in gens]
            toks += sum(g.n_tokens for g in gens)
            t = time.perf_counter()
            rerank_candidates(pm, prompt, texts)
            score_s += time.perf_counter() - t
        k = len(prompts)
        rows.append({"N": n, "sample_s_per_prompt": gen_s / k, "score_s_per_prompt": score_s / k,
                     "total_s_per_prompt": (gen_s + score_s) / k, "score_share": score_s / (gen_s + score_s),
                     "mean_tokens_per_sample": toks / (k * n)})
        print(rows[-1], flush=True)
    print(machine(), pm.model_id, f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}")
    print(table(rows, ["N", "sample_s_per_prompt", "score_s_per_prompt", "total_s_per_prompt", "score_share",
                       "mean_tokens_per_sample"]))


if __name__ == "__main__":
    main()
