"""Recipes: every shipped YAML validates without weights; config errors; SFT labels and packing;
the tiny in-house pipeline end to end on real data slices."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHATML, make_tokenizer
from prefheads.recipes import ConfigError, config_from_dict, dump_yaml, load_config
from prefheads.recipes.inhouse import plan_epochs
from prefheads.training.sft import IGNORE, LMSample, encode_sample, packed_rows, same_task_order

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(again) == cfg  # the resolved config saved beside outputs re-validates to the same


def test_shipped_recipes_cover_the_three_recipes():
    kinds = {load_config(p).recipe for p in SHIPPED}
    assert kinds == {"inhouse", "probes", "task_heads"}
    names = {p.name for p in SHIPPED}
    assert {"inhouse-551m.yaml", "inhouse-tiny.yaml", "qwen15-probes.yaml", "qwen15-probes-smollm2.yaml",
            "task-heads.yaml"} <= names


def test_inhouse_551m_has_the_papers_settings():
    c = load_config(ROOT / "recipes/inhouse-551m.yaml")
    v, s, a = c.stages.vocab, c.stages.sft, c.stages.align
    assert (c.model.size, c.model.init_embeddings_from, c.model.tokenizer.source) == ("full", "facebook/opt-125m",
                                                                                      "facebook/opt-125m")
    assert v.add_tokens == ["<|im_start|>", "<|im_end|>"] and v.train == "embeddings"
    assert (v.steps, v.batch_size, v.lr, v.warmup_steps, v.final_lr_ratio, v.clip) == (4096, 128, 6e-5, 200, 0.0, 1.0)
    assert (s.steps, s.batch_size, s.lr, s.warmup_steps, s.final_lr_ratio, s.clip) == (6144, 128, 3e-5, 200, 0.0, 1.0)
    assert (s.prior, s.prior_exclude, s.loss_on, s.pack_n, s.context) == (0.5, ["embed_tokens"], "assistant", 5, 2048)
    assert (a.steps, a.batch_size, a.lr, a.final_lr_ratio, a.warmup_steps, a.clip) == (23040, 64, 3e-6, 0.1, 200, 1.0)
    assert (a.prior, a.prior_exclude, a.beta, a.dpo_eps, a.dph_eps) == (0.5, [], 0.6, 0.25, 0.1)
    assert (a.pooler, a.objective, a.dpo_weight, a.dph_weight) == ("swiglu", "separable", 1.0, 1.0)
    fc = a.fit_config(task="x")
    assert (fc.mode, fc.batch_size * fc.grad_accum, fc.prior_exclude) == ("full", 64, [])
    tasks = {t.task for t in a.data}
    assert {"glue", "gpt4all", "race", "mmlu", "squad_v2", "orca_dpo", "ultrafeedback"} <= tasks


def test_fresh_model_sizes_and_chat_token_extension():
    from prefheads.chat import detect_format
    from prefheads.inhouse import InHouseForCausalLM
    from prefheads.recipes.inhouse import add_chat_tokens, model_config
    from prefheads.recipes.tokenizer import train_bpe

    tok = train_bpe(["Sentence: the quick brown fox.", "Answer: positive negative yes no"] * 20, 300)
    assert "<|im_end|>" not in tok.get_vocab() and not tok.chat_template
    full = model_config("full", 50265, tok, {})  # OPT-125m: 50265 tokens in 50272 rows
    assert (full.vocab_size, full.hidden_size, full.num_hidden_layers, full.embed_dim) == (50272, 1536, 18, 768)
    # a model with spare rows (like OPT's): the new tokens take them, no resize
    torch.manual_seed(0)
    model = InHouseForCausalLM(model_config("tiny", len(tok) + 6, tok, {}))
    n_old, rows = len(tok), model.get_input_embeddings().weight.shape[0]
    ids = add_chat_tokens(model, tok, ["<|im_start|>", "<|im_end|>"])
    emb = model.get_input_embeddings().weight
    assert ids == [n_old, n_old + 1] and emb.shape[0] == rows
    assert torch.allclose(emb[n_old], emb[:n_old].mean(0)) and torch.equal(emb[n_old], emb[n_old + 1])
    fmt = detect_format(tok)
    assert (fmt.mode, fmt.reward_token) == ("chat", "<|im_end|>")
    # a model without spare rows grows (tied LM head follows)
    tok2 = train_bpe(["a b c"] * 5, 300)
    model = InHouseForCausalLM(model_config("tiny", len(tok2), tok2, {}))
    add_chat_tokens(model, tok2, ["<|im_start|>", "<|im_end|>"])
    assert model.get_input_embeddings().weight.shape[0] == len(tok2) == model.config.vocab_size
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    p = _write(tmp_path, "recipe: inhouse\nstages:\n  sft:\n    stepz: 3\n    data: [glue]\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: stages\.sft\.stepz: unknown key; did you mean 'steps'"):
        load_config(p)


def test_type_and_value_errors_name_the_key(tmp_path):
    p = _write(tmp_path, "recipe: probes\nhead: {lr: fast}\ntrain: [glue]\neval: [glue]\n")
    with pytest.raises(ConfigError, match=r"head\.lr: expected a number, got 'fast'"):
        load_config(p)
    p = _write(tmp_path, "recipe: probes\ntrain: [{task: glue/sst3}]\neval: [glue]\n")
    with pytest.raises(ConfigError, match=r"train\.0: unknown task 'glue/sst3'; did you mean"):
        load_config(p)
    p = _write(tmp_path, "recipe: probes\ntrain: [{task: glue/sst2, split: tset}]\neval: [glue]\n")
    with pytest.raises(ConfigError, match=r"train\.0: task 'glue/sst2' has no split 'tset'"):
        load_config(p)
    p = _write(tmp_path, "recipe: inhouse\nstages: {align: {batch_size: 64, micro_batch_size: 10, data: [glue]}}\n")
    with pytest.raises(ConfigError, match=r"stages\.align: batch_size 64 must be a multiple"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"recipe: 'nope' is not a recipe; known: \['inhouse', 'probes', 'task_heads'\]"):
        config_from_dict({"recipe": "nope"}, "x.yaml")
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_config(tmp_path / "missing.yaml")


def test_the_probe_recipes_resolve_their_heads():
    """The paper's probe stays the paper's head; the reduced SmolLM2 one asks for fit's default head."""
    paper = load_config(ROOT / "recipes/qwen15-probes.yaml").head.fit_config(task="glue")
    assert (paper.pooler, paper.objective, paper.solver, paper.lm_score, paper.layer) == (
        "swiglu", "separable", "adamw", "none", -1)
    small = load_config(ROOT / "recipes/qwen15-probes-smollm2.yaml").head.fit_config(task="glue")
    assert (small.pooler, small.objective, small.solver, small.lm_score, small.layer) == (
        "identity", None, "ridge", "auto", "auto")
    assert paper.template == "paper" and small.template == "paper"  # GLUE's STS-B has no harness template
    assert load_config(ROOT / "recipes/qwen15-probes-smollm2.yaml").head.fit_config(task="arc_easy").template == "lm-eval"


def test_overrides_beat_the_file_which_beats_defaults():
    path = ROOT / "recipes/inhouse-tiny.yaml"
    base = load_config(path)
    cfg = load_config(path, ["stages.sft.steps=17", "stages.vocab.data.0.limit=5", "seed=3", "stages.align.lr=1e-4",
                             "eval=[glue/rte]", "model.config={num_hidden_layers: 1}"])
    assert cfg.stages.sft.steps == 17 and base.stages.sft.steps == 80  # CLI > file
    assert cfg.stages.vocab.data[0].limit == 5 and cfg.seed == 3 and cfg.stages.align.lr == 1e-4
    assert [e.task for e in cfg.eval] == ["glue/rte"] and cfg.eval[0].split == "eval"
    assert cfg.model.config == {"num_hidden_layers": 1}
    assert cfg.stages.sft.gradient_checkpointing is False  # not in the file: the default
    with pytest.raises(ConfigError, match=r"stages\.sft\.step: unknown key; did you mean 'steps'"):
        load_config(path, ["stages.sft.step=3"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(path, ["stages.vocab.data.99.limit=5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["seed"])


def test_plan_epochs_gives_exactly_the_configured_steps():
    assert plan_epochs(23040, 64, 2_000_000) == (1, 23040 * 64)
    e, n = plan_epochs(23040, 64, 1_000_000)
    assert e * (n // 64) == 23040 and n <= 1_000_000 and e == 2
    e, n = plan_epochs(160, 32, 2500)
    assert (e, n) == (4, 1280)
    with pytest.raises(ValueError, match="fewer than one step"):
        plan_epochs(10, 64, 63)


def _chat_tok():
    tok = make_tokenizer()
    tok.chat_template = CHATML
    return tok


def test_sft_labels_are_assistant_content_and_final_im_end_only():
    from prefheads.chat import detect_format

    tok = _chat_tok()
    fmt = detect_format(tok)
    s = LMSample("t", [{"role": "system", "content": "Below is an instruction."},
                       {"role": "user", "content": "Question: what is the capital of France?"}], "Paris, yes")
    ids, labels = encode_sample(tok, fmt, s, "assistant", 256)
    target = [int(i) for i, l in zip(ids, labels) if l != IGNORE]
    assert tok.decode(target) == "Paris, yes<|im_end|>"
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert all(l == IGNORE for l in labels[: len(ids) - len(target)])  # a contiguous masked prefix
    text = tok.decode([int(i) for i in ids])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\nParis, yes<|im_end|>")
    _, all_labels = encode_sample(tok, fmt, s, "all", 256)
    assert (all_labels == ids).all()


def test_packing_fills_rows_with_runs_of_five_same_task_samples():
    tasks = ["a"] * 20 + ["b"] * 10 + ["c"] * 5
    order = same_task_order(tasks, 5, random.Random(0))
    assert sorted(order) == list(range(len(tasks)))
    chunks = [[tasks[x] for x in order[k: k + 5]] for k in range(0, len(order), 5)]
    assert all(len(set(c)) == 1 for c in chunks), chunks  # runs of 5 consecutive samples of one task
    assert len({c[0] for c in chunks[:3]}) > 1 or len({c[0] for c in chunks}) == 3  # tasks interleave
    odd = same_task_order(["a"] * 7 + ["b"] * 3, 5, random.Random(1))
    runs = [[("a" if x < 7 else "b") for x in odd[k: k + n]] for k, n in _run_spans(odd, 7)]
    assert sorted(len(r) for r in runs) == [2, 3, 5] and all(len(set(r)) == 1 for r in runs)

    rng = np.random.default_rng(0)
    lens = rng.integers(5, 40, size=len(tasks))
    enc = {i: (np.arange(n, dtype=np.int32) + 100 * i, np.where(np.arange(n) < n // 2, IGNORE, 1).astype(np.int32))
           for i, n in enumerate(lens)}
    samples = [LMSample(t, [], "") for t in tasks]
    it = packed_rows(samples, enc.__getitem__, context=64, pack_n=5, seed=0)
    rows = [next(it) for _ in range(12)]
    flat = [s for r in rows for s in r.samples]
    expect = same_task_order(tasks, 5, random.Random(0))
    assert flat[: len(expect)] == expect[: len(flat)]  # rows follow the same-task order, no sample split
    for r in rows:
        assert len(r.ids) <= 64 and len(r.ids) == len(r.labels) == sum(lens[s] for s in r.samples)
        assert np.array_equal(r.ids, np.concatenate([enc[s][0] for s in r.samples]))
        # greedy: the next sample would not have fitted
    for a, b in zip(rows, rows[1:]):
        assert len(a.ids) + lens[b.samples[0]] > 64


def _run_spans(order: list[int], n_a: int) -> list[tuple[int, int]]:
    """(start, length) of maximal same-task stretches, a stretch of task a longer than 5 split at 5."""
    spans, i = [], 0
    while i < len(order):
        j = i
        while j < len(order) and (order[j] < n_a) == (order[i] < n_a):
            j += 1
        k = i
        while k < j:
            spans.append((k, min(5, j - k)))
            k += 5
        i = j
    return spans


# ----------------------------------------------------------------------------- end to end
def test_tiny_pipeline_end_to_end(shared_data, tmp_path):
    """All three stages on real slices; each stage's output feeds the next; the head is evaluated.

    Only what holds on any CPU is asserted here; how well the tiny head does (trained floats
    differ across CPUs) is measured by bench/inhouse_tiny.py, with the recipe's own step counts,
    and recorded in docs/benchmarks.md. Here stage 3 runs 40 of its 160 steps (its wiring, not
    its quality, is under test; the 160 steps took about 70 of the test's 110 seconds).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefheads import PreferenceModel
    from prefheads.recipes import run
    from prefheads.recipes.inhouse import add_chat_tokens, start_model

    threads = torch.get_num_threads()
    cfg = load_config(ROOT / "recipes/inhouse-tiny.yaml", [f"out={tmp_path / 'run'}", f"data_dir={shared_data}",
                                                                 "stages.align.steps=40"])
    result = run(cfg)
    assert torch.get_num_threads() == threads  # the recipe's threads: 1 is scoped to the run
    out = Path(cfg.out)
    assert load_config(out / "resolved_config.yaml") == cfg

    # stage 1: the tokenizer gained the two ChatML tokens; only the embedding changed
    tok1 = AutoTokenizer.from_pretrained(out / "vocab")
    new = result["vocab"]["new_tokens"]
    assert set(new) == {"<|im_start|>", "<|im_end|>"} and min(new.values()) >= cfg.model.tokenizer.vocab_size
    assert all(t in tok1.all_special_tokens for t in new) and tok1.chat_template
    start, tok0 = start_model(cfg)  # deterministic: same seed, same tokenizer training
    add_chat_tokens(start, tok0, cfg.stages.vocab.add_tokens)
    m1 = AutoModelForCausalLM.from_pretrained(out / "vocab")
    s0, s1 = start.state_dict(), m1.state_dict()
    changed = {k for k in s1 if not torch.equal(s0[k], s1[k])}
    assert changed and all("embed_tokens" in k or "lm_head.decoder" in k for k in changed), changed

    # stage 2: loss went down; every weight moved (prior-regularized), from the stage-1 folder
    sft = result["sft"]
    assert sft["last_loss"] < sft["first_loss"], sft
    m2 = AutoModelForCausalLM.from_pretrained(out / "sft")
    assert not torch.equal(m1.model.layers[0].mlp.up_proj.weight, m2.model.layers[0].mlp.up_proj.weight)
    hist = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == cfg.stages.sft.steps

    # stage 3: exactly the configured steps; heads + fine-tuned backbone saved; reloadable
    align = result["align"]
    steps = [json.loads(x) for x in (out / "align" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["step"] == cfg.stages.align.steps
    pm = PreferenceModel.from_pretrained(out / "align" / "backbone", heads=out / "align")
    assert pm.head_names == ["general"] and pm.chat.reward_token == "<|im_end|>"

    # the final head on a held-out split: OpenBookQA test, all 500 questions scored by every method
    res = json.loads((out / "results.json").read_text())
    obqa = res["tasks"]["openbookqa"]
    assert obqa["n"] == 500 and (out / "table.md").is_file()
    for method in ("dph:general", "logprob"):
        block = obqa["methods"][method]
        assert 0.0 <= block["metrics"]["accuracy"] <= 1.0
        assert sum(block["predicted"].values()) == 500  # the predicted-label distribution is shown
    assert align["n_val"] > 0 and 0.0 <= align["val_pair_accuracy"] <= 1.0


def test_frozen_head_recipes_run_on_a_tiny_backbone(shared_data, tmp_path):
    """probes and task_heads end to end (tiny random llama, real data, feature cache in tmp)."""
    import os

    from conftest import make_backbone
    from prefheads.recipes import run

    bb, tok = make_backbone("llama")
    bb.save_pretrained(tmp_path / "bb")
    tok.save_pretrained(tmp_path / "bb")
    head = "threads: 1\nhead: {epochs: 2, batch_size: 16, val_fraction: 0.2}\n"
    data = (f"data_dir: {shared_data}\neval: [{{task: glue/sst2, limit: 12}}, {{task: openbookqa, limit: 12}}, "
            f"{{task: race/middle, limit: 4}}]\n")
    old = os.environ.get("PREFHEADS_CACHE")
    os.environ["PREFHEADS_CACHE"] = str(tmp_path / "cache")
    try:
        p = _write(tmp_path, f"recipe: probes\nout: {tmp_path / 'probes'}\nmodels: [{tmp_path / 'bb'}]\n" + head + data
                   + "train: [{task: glue/sst2, limit: 24}, {task: openbookqa, limit: 24}]\n")
        res = run(p)
        table = (tmp_path / "probes" / "table.md").read_text()
        assert ("| model | Log GLUE / GPT4All / RACE | DPH GLUE / GPT4All / RACE | strongest log-prob GLUE / "
                "GPT4All / RACE |") in table
        (only,) = res.values()
        from prefheads.recipes.bench import group_value, strongest_baseline

        for g in ("glue", "gpt4all"):
            logp = [group_value(only, m, g)[0] for m in only["methods"] if not m.startswith("dph:")
                    and group_value(only, m, g)]
            assert strongest_baseline(only, g)[0] == max(logp) >= group_value(only, "logprob", g)[0]
        assert "lm-eval:acc_norm" in only["aggregates"]["gpt4all"]["values"]
        assert set(only["tasks"]) == {"glue/sst2", "openbookqa", "race/middle"}
        assert only["aggregates"]["gpt4all"]["partial"] and "dph:dph" in only["methods"]
        # task_heads with fit's default head (ridge solver, layer and LM scores by cross-validation)
        ridge = "threads: 1\nhead: {pooler: identity, objective: null, layer: auto, lm_score: auto}\n"
        p = _write(tmp_path, f"recipe: task_heads\nout: {tmp_path / 'th'}\nbase: {tmp_path / 'bb'}\n" + ridge + data
                   + "heads: {glue: [{task: glue/sst2, limit: 24}], gpt4all: [{task: openbookqa, limit: 24}]}\n")
        res = run(p)
        fitted = json.loads((tmp_path / "th" / "runs" / "glue" / "fit_config.json").read_text())
        assert (fitted["solver"], fitted["lm_score"], fitted["pooler"]) == ("ridge", "auto", "identity")
        assert (tmp_path / "th" / "runs" / "glue" / "layer_scores.json").is_file()  # the ridge fit's record
        assert res["train"]["glue"]["solver"] == "ridge"
        table = (tmp_path / "th" / "table.md").read_text()
        assert "| head | GLUE | GPT4All | RACE |" in table and "| glue head |" in table and "| gpt4all head |" in table
        assert res["methods"] == ["logprob", "lm-eval:acc", "lm-eval:acc_norm", "lm-eval:mean", "dph:glue", "dph:gpt4all"]
        assert (tmp_path / "th" / "heads" / "heads.json").is_file()
        assert (tmp_path / "probes" / "resolved_config.yaml").is_file()
        # per-task probes: one head per task (BoolQ trains on dev rows its benchmark does not score)
        p = _write(tmp_path, f"recipe: probes\nout: {tmp_path / 'pt'}\nmodels: [{tmp_path / 'bb'}]\nper_task: true\n"
                   + ridge.replace("auto}", "auto, template: null}") + f"data_dir: {shared_data}\n"
                   + "train: [{task: glue/sst2, limit: 24}, {task: boolq, split: validation, offset: 12, limit: 24}]\n"
                   + "eval: [{task: glue/sst2, limit: 12}, {task: boolq, limit: 12}]\n")
        (only,) = run(p).values()
        assert set(only["train"]) == {"glue/sst2", "boolq"} and only["train"]["boolq"]["tasks"] == {"boolq": 24}
        (model_dir,) = [d for d in (tmp_path / "pt").iterdir() if d.is_dir()]
        for head in ("dph-glue_sst2", "dph-boolq"):
            assert (model_dir / head / "layer_scores.json").is_file()
        assert only["methods"][-1] == "dph:dph" and set(only["tasks"]) == {"glue/sst2", "boolq"}
        # template: null is fit's default: the harness's template for both tasks, trained and scored
        assert {t["template"] for t in only["train"].values()} == {"lm-eval"}
        assert {r["variant"] for r in only["tasks"].values()} == {"lm-eval"}
        # the paper template's log-prob stays in the table (the paper's Log column) beside the harness-template one
        assert only["methods"][1] == "logprob:paper" and all("logprob:paper" in r["methods"] for r in only["tasks"].values())
    finally:
        if old is None:
            os.environ.pop("PREFHEADS_CACHE", None)
        else:
            os.environ["PREFHEADS_CACHE"] = old


def test_offset_trains_on_rows_the_benchmark_does_not_score(shared_data):
    """A source's offset skips the first rows of the seeded order a benchmark scores; a mix that
    shares rows with a benchmark is refused, naming the task and the offset that fixes it."""
    from prefheads.recipes.config import EvalSource, TaskSource
    from prefheads.recipes.data import check_disjoint, load_rows

    d = str(shared_data)
    scored = [r.id for r in load_rows(TaskSource(task="boolq", split="eval", limit=12), d, 0)]
    first = [r.id for r in load_rows(TaskSource(task="boolq", split="validation", limit=20), d, 0)]
    carved = [r.id for r in load_rows(TaskSource(task="boolq", split="validation", limit=8, offset=12), d, 0)]
    assert first[:12] == scored and carved == first[12:20]
    bench = [EvalSource(task="boolq", limit=12)]
    with pytest.raises(ValueError, match=r"^train: boolq \[validation\] holds 12 of the rows .* offset: 12"):
        check_disjoint({"train": [TaskSource(task="boolq", split="validation", limit=20)]}, bench, d, 0)
    check_disjoint({"train": [TaskSource(task="boolq", split="validation", limit=20, offset=12),
                              TaskSource(task="glue/sst2", limit=5)]}, bench, d, 0)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        TaskSource(task="boolq", split="validation", offset=-1)
    with pytest.raises(ValueError, match="offset is for training sources"):
        EvalSource(task="boolq", offset=3)


def test_per_task_probes_need_training_rows_for_every_benchmark(tmp_path):
    p = _write(tmp_path, "recipe: probes\nper_task: true\ntrain: [glue/sst2]\neval: [glue/sst2, {task: piqa}]\n")
    with pytest.raises(ConfigError, match=r"benchmark tasks \['piqa'\] have no training source"):
        load_config(p)
    p = _write(tmp_path, "recipe: probes\nper_task: true\ntrain: [glue/sst2, {task: piqa, split: validation, "
                         "offset: 10}]\neval: [glue/sst2, {task: piqa, limit: 10}]\n")
    assert load_config(p).per_task


def test_routed_evaluation_scores_each_task_with_its_own_head(two_head_pm, shared_data):
    """route: one head name (the DPH column) served per task by that task's head, removed afterwards."""
    from prefheads.recipes.bench import evaluate
    from prefheads.recipes.config import EvalSource

    srcs = [EvalSource(task="glue/sst2", limit=6), EvalSource(task="openbookqa", limit=6)]
    both = evaluate(two_head_pm, srcs, data_dir=str(shared_data), seed=0, heads=["a", "b"])
    # the two heads disagree somewhere, so a head served to the wrong task would show
    def seen(block):
        return block["predicted"], block["metrics"]

    assert any(seen(both["tasks"][t]["methods"]["dph:a"]) != seen(both["tasks"][t]["methods"]["dph:b"])
               for t in both["tasks"])
    routed = evaluate(two_head_pm, srcs, data_dir=str(shared_data), seed=0, heads=["dph"],
                      route={"glue/sst2": "a", "openbookqa": "b"})
    assert "dph" not in two_head_pm.heads  # the alias does not outlive the evaluation
    for task, head in (("glue/sst2", "a"), ("openbookqa", "b")):
        got, want = routed["tasks"][task]["methods"]["dph:dph"], both["tasks"][task]["methods"][f"dph:{head}"]
        assert seen(got) == seen(want)
    assert routed["methods"][-1] == "dph:dph"
    with pytest.raises(ValueError, match=r"no head for benchmark tasks \['glue/sst2'\]"):
        evaluate(two_head_pm, srcs, data_dir=str(shared_data), seed=0, heads=["dph"], route={"openbookqa": "b"})
    with pytest.raises(ValueError, match="a head named 'a' is attached already"):
        evaluate(two_head_pm, srcs, data_dir=str(shared_data), seed=0, heads=["a"], route={"glue/sst2": "b",
                                                                                          "openbookqa": "b"})
    assert set(two_head_pm.heads) == {"a", "b"}


def test_head_templates_are_checked_when_the_recipe_loads(tmp_path):
    base = "recipe: probes\neval: [glue/sst2]\n"
    with pytest.raises(ConfigError, match="template must be one of"):
        load_config(_write(tmp_path, base + "train: [glue/sst2]\nhead: {template: lmeval}\n"))
    with pytest.raises(ConfigError, match=r"head.template: glue/stsb: no 'lm-eval' template"):
        load_config(_write(tmp_path, base + "train: [glue/sst2, glue/stsb]\nhead: {template: lm-eval}\n"))
    th = ("recipe: task_heads\neval: [glue/sst2]\nhead: {template: null}\n"
          "heads: {glue: [glue/stsb], obqa: [openbookqa]}\n")
    with pytest.raises(ConfigError, match=r"would train on different templates \(\{'glue': 'paper', 'obqa': 'lm-eval'\}\)"):
        load_config(_write(tmp_path, th))


def test_a_task_without_the_heads_template_is_scored_on_the_papers_with_a_warning(two_head_pm, shared_data, caplog):
    from prefheads.recipes.bench import evaluate
    from prefheads.recipes.config import EvalSource

    meta = two_head_pm.heads["a"].config.meta
    old = meta.get("template")
    meta["template"] = "lm-eval"
    try:
        with caplog.at_level("WARNING", logger="prefheads.recipes.bench"):
            res = evaluate(two_head_pm, [EvalSource(task="race/middle", limit=2)], data_dir=str(shared_data), seed=0,
                           heads=["a"])
    finally:
        meta["template"] = old
    assert res["tasks"]["race/middle"]["variant"] == "paper"
    assert "race/middle has no 'lm-eval' template" in caplog.text
