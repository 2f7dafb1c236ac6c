"""``--layer auto`` on cached features: one run per candidate head vs every head stacked in one run.

Times ``fit``'s layer search (``prefheads.training.fit._fit_auto``) both ways on the same cached
features: synthetic ones of a realistic size (by default 3,000 questions x 4 candidates, d = 576
as SmolLM2-135M, 8 layers, ``--lm-score auto`` so each layer trains with and without the LM score:
16 heads, 10 epochs). The backbone is a random model of that width that never runs (the features
stand in for its cached pass), so the figure is the head training alone. Prints both times, their
ratio, and whether both ways chose the same layer with the same validation accuracies.

    .venv/bin/python bench/stacked_layers.py [--questions 3000] [--pooler identity] [--hidden 576]
        [--epochs 10] [--repeat 1] [--stack-any-size] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402


def tiny_pm(d: int, blocks: int):
    """A random Llama of width ``d`` (never run) with a ChatML byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from prefheads import PreferenceModel

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["question answer user assistant"] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<pad>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                         "'<|im_end|>' + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, num_hidden_layers=blocks, intermediate_size=1536,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return PreferenceModel.from_backbone(LlamaForCausalLM(cfg).eval(), tok, model_id="bench/random-llama")


def synthetic(questions: int, k: int, d: int, layers: list[int], seed: int = 0):
    """Candidates and their 'cached' features: the preferred row shifted along one direction, more
    so in the middle layers; log-probs that prefer it weakly."""
    from prefheads.engine import Features
    from prefheads.training.data import Candidates

    g = torch.Generator().manual_seed(seed)
    m = questions * k
    cands = Candidates(prompts=[f"question {i // k}" for i in range(m)], completions=[f"answer {i % k}" * (1 + i % 3)
                                                                                      for i in range(m)],
                       groups=[(q * k + q % k, [q * k + j for j in range(k) if j != q % k]) for q in range(questions)],
                       ids=[f"q{q}" for q in range(questions)], source="synthetic")
    pref = torch.zeros(m)
    pref[[w for w, _ in cands.groups]] = 1.0
    direction = torch.randn(d, generator=g) / d ** 0.5
    strength = [0.5 + 2.0 * (1 - abs(i / max(1, len(layers) - 1) - 0.6)) for i in range(len(layers))]
    states = {l: torch.randn(m, d, generator=g) + s * pref[:, None] * direction * 0.5 + 2.0
              for l, s in zip(layers, strength)}
    n_tokens = torch.full((m,), 4, dtype=torch.long) + torch.arange(m) % 3
    feats = Features(states=states, logprob_sum=-n_tokens * 2.0 + 0.3 * pref + torch.randn(m, generator=g),
                     n_tokens=n_tokens)
    return cands, feats


class _Said(logging.Handler):
    """Keeps the last message of ``prefheads.training.stacked`` (how the heads were trained)."""

    last = ""

    def emit(self, record: logging.LogRecord) -> None:
        _Said.last = record.getMessage()


def run(stacking: bool, cfg, pm, cands, feats, out: Path) -> tuple[float, dict]:
    """Time ``_fit_auto`` with stacking on or off; returns ``(seconds, layer_scores.json)``."""
    import importlib

    from prefheads.training.data import prompt_keys, split

    fit_mod = importlib.import_module("prefheads.training.fit")  # the module (the package exports fit())

    os.environ["PREFHEADS_STACKED"] = "1" if stacking else "0"
    fit_mod.frozen_features = lambda *a, **k: (feats, True)  # the backbone pass, already cached
    if "bench" in pm.heads:
        pm.remove_head("bench")
    tr, va = split(len(cands), cfg.val_fraction, cfg.seed, keys=prompt_keys(cands))
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fit_mod._fit_auto(cfg, pm, "bench", cands, tr, va, out, [None] * len(cands.completions), {}, progress=False)
    return time.perf_counter() - t0, json.loads((out / "layer_scores.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=3000)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=8, help="candidate layers (blocks 0..n-2 and the final norm)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--pooler", default="identity")
    ap.add_argument("--objective", default="listwise")
    ap.add_argument("--lm-score", default="auto", help="auto: each layer with and without the score (2 heads)")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two ways this many times; the "
                    "fastest time of each is reported (the box is shared)")
    ap.add_argument("--stack-any-size", action="store_true", help="stack on a CPU whatever the head's size "
                    "(measures the limit prefheads.training.stacked.CPU_STACKED_HEAD_WEIGHTS)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the box is shared; spinning "
                    "OpenMP threads on busy cores slow the small per-step kernels of both ways tenfold)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.stack_any_size:
        import prefheads.training.stacked as stacked

        stacked.CPU_STACKED_HEAD_WEIGHTS = float("inf")
    said = logging.getLogger("prefheads.training.stacked")
    said.setLevel(logging.INFO)
    said.addHandler(_Said())

    from prefheads.training.config import FitConfig

    layers = list(range(args.layers - 1)) + [-1]
    pm = tiny_pm(args.hidden, args.layers - 1)
    cands, feats = synthetic(args.questions, args.candidates, args.hidden, layers)
    cfg = FitConfig(data="synthetic.jsonl", layer="auto", layers=",".join(map(str, layers)), pooler=args.pooler,
                    objective=args.objective, lm_score=args.lm_score, epochs=args.epochs, batch_size=32, lr=1e-3)
    tmp = Path(tempfile.mkdtemp())
    times: dict[bool, list[float]] = {False: [], True: []}
    reports: dict[bool, dict] = {}
    for i in range(args.repeat):
        for stacking in (False, True):
            secs, reports[stacking] = run(stacking, cfg, pm, cands, feats, tmp / f"{stacking}{i}")
            times[stacking].append(secs)
        how = _Said.last.partition(": ")[2]  # the stacked run: "training the N heads at once" or why not
    seq_s, stk_s = min(times[False]), min(times[True])
    seq, stk = reports[False], reports[True]
    heads = len(layers) * (2 if args.lm_score == "auto" else 1)
    print(machine())
    print(f"{args.questions} questions x {args.candidates} candidates, d={args.hidden}, {len(layers)} layers, "
          f"{heads} heads, {args.epochs} epochs, {args.pooler} pooler, {args.objective}; stacked run: {how}")
    print(table([{"sequential s": seq_s, "stacked s": stk_s, "ratio": seq_s / stk_s,
                  "chosen (seq / stacked)": f"{seq['chosen']} / {stk['chosen']}",
                  "same val accuracies": seq["val_accuracy_by_lm_score"] == stk["val_accuracy_by_lm_score"]}],
                ["sequential s", "stacked s", "ratio", "chosen (seq / stacked)", "same val accuracies"]))


if __name__ == "__main__":
    main()
