"""The in-house pipeline (PAPER.md section 4): vocab extension → SFT → joint cDPO + DPH.

``<out>/vocab`` and ``<out>/sft`` hold ``save_pretrained`` model + tokenizer folders; ``<out>/align``
holds the heads with the fine-tuned backbone (``fit`` mode ``full``). Each stage reads the previous
stage's folder, so a stage can be re-run alone (``run_stages=[align]``). Every stage writes
``stage.json`` (settings, data counts, first/last loss, seconds) and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from prefheads.recipes.config import AlignStage, InHouseRecipe, LMTrainConfig, SFTStage, VocabStage
from prefheads.recipes.data import candidates, encodable, lm_samples

log = logging.getLogger(__name__)

# The ChatML layout of PAPER.md section 6 (system / user / assistant turns).
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- the starting model
def start_model(cfg: InHouseRecipe) -> tuple[Any, Any]:
    """The model and tokenizer stage 1 starts from (a pretrained folder, or a fresh model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import prefheads.inhouse  # noqa: F401 - registers the architecture
    from prefheads.inhouse import InHouseForCausalLM
    from prefheads.recipes.tokenizer import load_tokenizer, prompt_texts, train_bpe

    spec = cfg.model
    if spec.base is not None:
        return AutoModelForCausalLM.from_pretrained(spec.base), AutoTokenizer.from_pretrained(spec.base)
    if spec.tokenizer.source == "train":
        samples = lm_samples(cfg.stages.vocab.data, cfg.data_dir, cfg.seed)
        random.Random(cfg.seed).shuffle(samples)
        texts = [t for s in samples[: spec.tokenizer.train_texts] for t in prompt_texts(s.prompt, s.completion)]
        tok = train_bpe(texts, spec.tokenizer.vocab_size)
    else:
        tok = load_tokenizer(spec.tokenizer.source)
    mcfg = model_config(spec.size, len(tok), tok, spec.config)
    torch.manual_seed(cfg.seed)
    model = InHouseForCausalLM(mcfg)
    if spec.init_embeddings_from:
        _copy_embeddings(model, spec.init_embeddings_from)
    return model, tok


def model_config(size: str, n_tokens: int, tok: Any, overrides: dict[str, Any]) -> Any:
    """The ``InHouseConfig`` of a fresh model: ``full`` (the defaults) or ``tiny``, sized to the tokenizer.

    The full model keeps OPT's 50272 rows when the tokenizer is smaller (50265 tokens).
    """
    from prefheads.inhouse import InHouseConfig

    kw = dict(overrides)
    kw.setdefault("vocab_size", max(n_tokens, InHouseConfig.vocab_size) if size == "full" else n_tokens)
    kw.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)
    return InHouseConfig(**kw) if size == "full" else InHouseConfig.tiny(**kw)


def _copy_embeddings(model: Any, source: str) -> None:
    """Initialise the token embedding from another causal LM's (OPT-125m: 50272 x 768)."""
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(source).get_input_embeddings().weight.detach()
    dst = model.get_input_embeddings().weight
    if src.shape[1] != dst.shape[1] or src.shape[0] > dst.shape[0]:
        raise ValueError(f"embeddings of {source} are {tuple(src.shape)}; the model needs width {dst.shape[1]} "
                         f"and at most {dst.shape[0]} rows")
    with torch.no_grad():
        dst[: src.shape[0]].copy_(src)
    log.info("token embedding initialised from %s", source)


# ----------------------------------------------------------------------------- stages 1-2
def add_chat_tokens(model: Any, tok: Any, tokens: list[str]) -> list[int]:
    """Add ``tokens`` as special tokens, set the ChatML template, grow the embedding if needed.

    New rows start at the mean of the existing embedding rows. Returns the new token ids.
    """
    old = len(tok)
    missing = [t for t in tokens if t not in tok.get_vocab()]
    tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tok.chat_template = CHATML_TEMPLATE
    ids = tok.convert_tokens_to_ids(tokens)
    emb = model.get_input_embeddings()
    if len(tok) > emb.weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        emb = model.get_input_embeddings()
    with torch.no_grad():
        mean = emb.weight[:old].mean(0)
        for i in ids:
            if i >= old:
                emb.weight[i] = mean
    return ids


def _lm_stage(name: str, st: VocabStage | SFTStage, model: Any, tok: Any, cfg: InHouseRecipe, out: Path) -> dict[str, Any]:
    from prefheads.chat import detect_format
    from prefheads.training.sft import encode_sample, packed_rows, train_lm

    t0 = time.perf_counter()
    device = _device(cfg.model.device)
    model.to(device)
    fmt = detect_format(tok)
    samples = lm_samples(st.data, cfg.data_dir, cfg.seed)
    context = min(st.context, int(getattr(model.config, "max_position_embeddings", st.context)))
    # tokenized once up front (samples whose reply alone overflows the context are left out)
    encoded, kept = [], []
    for s in samples:
        try:
            encoded.append(encode_sample(tok, fmt, s, st.loss_on, context))
            kept.append(s)
        except ValueError:
            continue
    if len(kept) < len(samples):
        _say(f"[{name}] {len(samples) - len(kept)} of {len(samples)} samples left out (longer than the context)")
    samples = kept
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.task] = counts.get(s.task, 0) + 1
    _say(f"[{name}] {len(samples)} samples from {len(counts)} tasks, context {context}, "
         f"{st.steps} steps x {st.batch_size} rows, train {st.train}, loss on {st.loss_on}")
    rows = packed_rows(samples, encoded.__getitem__, context, st.pack_n, seed=cfg.seed * 1000 + st.seed)
    out.mkdir(parents=True, exist_ok=True)
    lm = LMTrainConfig(**st.lm_fields())
    history = train_lm(model, rows, lm, pad_id=tok.pad_token_id or 0, out=out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    k = max(1, min(10, len(history) // 4))
    summary = {"stage": name, "samples": len(samples), "tasks": counts, "context": context,
               "first_loss": sum(h["loss"] for h in history[:k]) / k,
               "last_loss": sum(h["loss"] for h in history[-k:]) / k, "steps": len(history),
               "seconds": round(time.perf_counter() - t0, 1), "out": str(out)}
    (out / "stage.json").write_text(json.dumps(summary, indent=2))
    _say(f"[{name}] loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} "
         f"(mean of first/last {k} steps) in {summary['seconds']}s; saved {out}")
    return summary


def vocab_stage(cfg: InHouseRecipe, out: Path) -> dict[str, Any]:
    """Stage 1: add the ChatML tokens, train the embeddings only, save model + tokenizer to ``out``."""
    model, tok = start_model(cfg)
    ids = add_chat_tokens(model, tok, cfg.stages.vocab.add_tokens)
    summary = _lm_stage("vocab", cfg.stages.vocab, model, tok, cfg, out)
    summary["new_tokens"] = dict(zip(cfg.stages.vocab.add_tokens, ids))
    (out / "stage.json").write_text(json.dumps(summary, indent=2))
    return summary


def _load_stage(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import prefheads.inhouse  # noqa: F401

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model: run the previous stage first")
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def sft_stage(cfg: InHouseRecipe, prev: Path, out: Path) -> dict[str, Any]:
    """Stage 2: SFT of the stage-1 model (assistant-token loss, same-task packing, prior on non-embeddings)."""
    model, tok = _load_stage(prev)
    return _lm_stage("sft", cfg.stages.sft, model, tok, cfg, out)


# ----------------------------------------------------------------------------- stage 3
def plan_epochs(steps: int, per_step: int, available: int) -> tuple[int, int]:
    """``(epochs, examples)`` so that ``epochs × examples / per_step == steps`` exactly.

    The fewest epochs (a divisor of ``steps``) whose per-epoch share fits in ``available``
    examples: every example is seen once per epoch, with a fresh wrong answer each time.
    """
    if available < per_step:
        raise ValueError(f"the alignment mix has {available} examples, fewer than one step's {per_step}")
    for epochs in range(1, steps + 1):
        if steps % epochs == 0 and (steps // epochs) * per_step <= available:
            return epochs, (steps // epochs) * per_step
    raise AssertionError("unreachable: epochs == steps always fits")  # pragma: no cover


def align_stage(cfg: InHouseRecipe, prev: Path, out: Path, progress: bool = False) -> tuple[dict[str, Any], Any]:
    """Stage 3: joint cDPO + DPH of the whole SFT model through ``fit`` (mode ``full``)."""
    from prefheads.model import PreferenceModel
    from prefheads.training import fit

    st: AlignStage = cfg.stages.align
    t0 = time.perf_counter()
    model, tok = _load_stage(prev)
    model.to(_device(cfg.model.device))
    pm = PreferenceModel.from_backbone(model, tok, model_id=str(prev))

    cands, counts = candidates(st.data, cfg.data_dir, cfg.seed, keep=encodable(pm))
    n_val = min(st.val_pairs, len(cands) // 10)
    epochs, n_train = plan_epochs(st.steps, st.batch_size, len(cands) - n_val)
    order = list(range(len(cands)))
    random.Random(cfg.seed).shuffle(order)
    cands = cands.subset(sorted(order[: n_train + n_val]))
    n = n_train + n_val
    fcfg = st.fit_config(task="mix(" + ",".join(sorted(counts)) + ")", out=str(out), seed=cfg.seed,
                         epochs=epochs, val_fraction=n_val / n, warmup_ratio=(st.warmup_steps + 0.5) / st.steps)
    _say(f"[align] {n_train} train + {n_val} val examples from {len(counts)} tasks; {epochs} epoch(s) x "
         f"{n_train // st.batch_size} steps of {st.batch_size} pairs = {st.steps} steps")
    res = fit(fcfg, pm=pm, progress=progress, cands=cands)
    hist = res.history
    summary = {"stage": "align", "tasks": counts, "n_train": res.n_train, "n_val": res.n_val, "epochs": epochs,
               "steps": st.steps, "best_epoch": res.best_epoch,
               "val_pair_accuracy": hist[res.best_epoch - 1]["val_pair_accuracy"],
               "first_epoch_loss": hist[0]["loss"], "last_epoch_loss": hist[-1]["loss"],
               "seconds": round(time.perf_counter() - t0, 1), "out": str(out)}
    (out / "stage.json").write_text(json.dumps(summary, indent=2))
    _say(f"[align] loss {summary['first_epoch_loss']:.3f} -> {summary['last_epoch_loss']:.3f}; "
         f"val pair accuracy {summary['val_pair_accuracy']:.3f}; {summary['seconds']}s; saved {out}")
    return summary, pm


# ----------------------------------------------------------------------------- the recipe
def inhouse(cfg: InHouseRecipe, progress: bool = False) -> dict[str, Any]:
    """Run the configured stages; evaluate the final model on ``cfg.eval``. Returns the summaries."""
    from prefheads.recipes.bench import SUBSET_NOTE, accuracy_of, evaluate, heads_table, tasks_table

    root = Path(cfg.out)
    dirs = {s: root / s for s in ("vocab", "sft", "align")}
    result: dict[str, Any] = {}
    pm = None
    if "vocab" in cfg.run_stages:
        result["vocab"] = vocab_stage(cfg, dirs["vocab"])
    if "sft" in cfg.run_stages:
        result["sft"] = sft_stage(cfg, dirs["vocab"], dirs["sft"])
    if "align" in cfg.run_stages:
        result["align"], pm = align_stage(cfg, dirs["sft"], dirs["align"], progress)
    if cfg.eval and pm is not None:
        head = cfg.stages.align.head_name
        res = evaluate(pm, cfg.eval, data_dir=cfg.data_dir, seed=cfg.seed, heads=[head], progress=_say)
        result["eval"] = res
        (root / "results.json").write_text(json.dumps(res, indent=2))
        (root / "table.md").write_text(heads_table(res, [head]) + "\n" + tasks_table(res) + "\n" + SUBSET_NOTE + "\n")
        for m in res["methods"]:
            _say(f"[eval] {m}: " + ", ".join(f"{t} {100 * accuracy_of(res, t, m):.1f}%" for t in res["tasks"]))
    (root / "pipeline.json").write_text(json.dumps({k: v for k, v in result.items() if k != "eval"}, indent=2))
    return result
