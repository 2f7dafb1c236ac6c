"""K heads over 1 frozen + 2 LoRA folders on the bundled SmolLM2: one model vs one model per folder.

Each layout runs in its own process so its memory figures are its own (run ``make`` once first):

    .venv/bin/python bench/multi_folder.py make       # three head folders (2 heads each; 2 with LoRA adapters)
    .venv/bin/python bench/multi_folder.py one        # all three folders on one model
    .venv/bin/python bench/multi_folder.py separate   # one model per folder
    .venv/bin/python bench/multi_folder.py base_only  # the model alone

``BENCH_DTYPE=bfloat16`` for bf16 weights; ``MULTI_FOLDER_ROOT`` for the folders' location.
Prints one JSON line: median seconds per request (8 candidates of one prompt), resident memory.
"""
import json, os, resource, sys, time
import psutil, torch
torch.set_num_threads(1)
from prefheads import PreferenceModel
ROOT = os.environ.get("MULTI_FOLDER_ROOT", "/tmp/prefheads-multi-folder")
FOLDERS = ["frozen", "lora_a", "lora_b"]
PROMPT = "Which planet in the solar system is known as the red planet, and why does it look red from Earth?"
CANDS = ["Mars. Iron oxide dust on its surface makes it look red.", "Jupiter, because of its Great Red Spot.",
         "Venus, since its thick clouds reflect red light.", "Mars, whose rusty soil gives it a red tint.",
         "Mercury: it is closest to the Sun.", "Saturn, because of its rings.",
         "Mars; the red colour comes from iron minerals that oxidised.", "The Moon during an eclipse."]
def rss(): return psutil.Process().memory_info().rss / 2**20
def uss():
    m = psutil.Process().memory_full_info(); return {"uss": round(m.uss / 2**20), "pss": round(m.pss / 2**20)}
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def make():
    from peft import LoraConfig
    for i, f in enumerate(FOLDERS):
        pm = PreferenceModel.from_pretrained(None, dtype=os.environ.get("BENCH_DTYPE", "float32"))
        names = [f"{f}_{k}" for k in range(2)]
        for n in names:
            pm.add_head(n, "swiglu" if n.endswith("0") else "bert", init_std=0.05)
        if f != "frozen":
            pm.new_adapter(f, LoraConfig(r=8, lora_alpha=16, target_modules=list(pm.profile.lora_targets)), heads=names)
            g = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for n, p in pm.backbone.named_parameters():
                    if "lora_B" in n:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        pm.save_heads(f"{ROOT}/{f}")

def timeit(fn, reps=5):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]

def one():
    r0 = rss()
    pm = PreferenceModel.from_pretrained(None, dtype=os.environ.get("BENCH_DTYPE", "float32"))
    for f in FOLDERS:
        pm.load_heads(f"{ROOT}/{f}")
    loaded = rss()
    out = {"layout": "one model, 3 folders", "groups": [(a, n) for a, n in pm.head_groups()]}
    out["all_heads_s"] = timeit(lambda: pm.score_all_heads(PROMPT, CANDS))
    out["one_head_s"] = {h: timeit(lambda h=h: pm.score(PROMPT, CANDS, head=h)) for h in ("frozen_0", "lora_a_0")}
    every = pm.score_all_heads(PROMPT, CANDS)
    out["rss_after_load_mb"], out["rss_mb"], out["ru_maxrss_mb"], out["uss_mb"] = round(loaded), round(rss()), round(peak()), uss()
    # correctness on the real model: each head as its folder alone
    diffs = {}
    for f in FOLDERS:
        alone = PreferenceModel.from_pretrained(None, dtype=os.environ.get("BENCH_DTYPE", "float32")); alone.load_heads(f"{ROOT}/{f}")
        for h, r in alone.score_all_heads(PROMPT, CANDS).items():
            diffs[h] = float((r - every[h]).abs().max())
    out["max_abs_diff_vs_alone"] = max(diffs.values())
    # fast path: frozen heads only, no adapters; overhead of grouping next to a direct pass
    fz = PreferenceModel.from_pretrained(None, dtype=os.environ.get("BENCH_DTYPE", "float32")); fz.load_heads(f"{ROOT}/frozen")
    def direct():
        feats = fz.features([PROMPT] * len(CANDS), CANDS)
        return {n: fz(feats.states, n) for n in fz.heads}
    for h in fz.heads.values(): h.eval()
    out["frozen_only_score_all_heads_s"] = timeit(lambda: fz.score_all_heads(PROMPT, CANDS), reps=9)
    out["frozen_only_direct_pass_s"] = timeit(direct, reps=9)
    t = time.perf_counter()
    for _ in range(1000):
        with fz.reading(None):
            fz.head_groups()
    out["grouping_overhead_us"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    for _ in range(20):
        with pm.reading(None):
            pass
    out["disable_adapter_ms"] = (time.perf_counter() - t) / 20 * 1e3
    t = time.perf_counter()
    for _ in range(20):
        with pm.reading("lora_b"):
            pass
    out["set_adapter_switch_ms"] = (time.perf_counter() - t) / 20 * 1e3
    return out

def separate():
    pms = []
    for f in FOLDERS:
        pm = PreferenceModel.from_pretrained(None, dtype=os.environ.get("BENCH_DTYPE", "float32")); pm.load_heads(f"{ROOT}/{f}"); pms.append(pm)
    loaded = rss()
    out = {"layout": "one model per folder"}
    out["all_heads_s"] = timeit(lambda: [p.score_all_heads(PROMPT, CANDS) for p in pms])
    out["one_head_s"] = {"frozen_0": timeit(lambda: pms[0].score(PROMPT, CANDS, head="frozen_0")),
                         "lora_a_0": timeit(lambda: pms[1].score(PROMPT, CANDS, head="lora_a_0"))}
    out["rss_after_load_mb"], out["rss_mb"], out["ru_maxrss_mb"], out["uss_mb"] = round(loaded), round(rss()), round(peak()), uss()
    return out

def base_only():
    pm = PreferenceModel.from_pretrained(None, dtype=os.environ.get("BENCH_DTYPE", "float32"))
    return {"layout": "bundled model alone, no heads", "rss_mb": round(rss()), "ru_maxrss_mb": round(peak())}

print(json.dumps(globals()[sys.argv[1]](), default=str))
