"""Evaluation: the paper's per-task metrics and aggregates, invariances, results files, the eval CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from conftest import _cfg, make_tokenizer
from prefheads import PreferenceModel, tasks
from prefheads.eval import LOGPROB, ChoiceScores, aggregates, evaluate, score_examples, summarize, task_metrics
from prefheads.eval.report import comparison_rows, load_records, load_results, save_run
from prefheads.eval.metrics import glue_score, mcc, race_score
from prefheads.types import Example


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: with the 2 shared cores oversubscribed, torch's thread pool makes each
    # 32-wide matmul ~50x slower than one thread does.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_pm(family: str = "llama", seed: int = 0) -> PreferenceModel:
    """A tiny random model whose context fits real data rendered by the tiny byte-level tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    cfg = _cfg(family, len(tok))
    cfg.max_position_embeddings, cfg.pad_token_id, cfg.eos_token_id = 8192, tok.pad_token_id, tok.eos_token_id
    torch.manual_seed(seed)
    return PreferenceModel.from_backbone(AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval(), tok)


def with_heads(pm: PreferenceModel) -> PreferenceModel:
    # init_std 0.5 gives rewards of order 1, so tolerances below are meaningful
    pm.add_head("sep", "swiglu", init_std=0.5, dropout=0.3, meta={"objective": "separable"})
    pm.add_head("con", "bert", init_std=0.5, meta={"objective": "contrastive"})
    return pm


def _fake_scores(spec, examples, preds):
    table = [[1.0 if j == p else 0.0 for j in range(len(ex.choices))] for ex, p in zip(examples, preds)]
    return ChoiceScores(list(examples), logprob=table, logprob_sum=table)


def _ex(task, label, choices, **meta):
    return Example(id=str(len(meta)), prompt=[{"role": "user", "content": "q"}], choices=list(choices), label=label,
                   task=task, meta=meta)


# ----------------------------------------------------------------------------- metrics, pure


def test_stsb_correlates_the_chosen_integer_with_the_gold_float():
    spec = tasks.get_task("glue/stsb")
    gold = [0.4, 1.2, 2.6, 3.8, 4.4, 5.0, 2.2]
    preds = [0, 2, 2, 3, 5, 5, 1]
    exs = [_ex("glue/stsb", round(g), spec.choices, score=g, split="validation") for g in gold]
    blocks, got = task_metrics(spec, _fake_scores(spec, exs, preds))
    m = blocks[LOGPROB]
    assert got[LOGPROB] == preds
    assert m["official"] == ["pearson", "spearman"]
    assert m["metrics"]["pearson"] == pytest.approx(stats.pearsonr(preds, gold)[0])
    assert m["metrics"]["spearman"] == pytest.approx(stats.spearmanr(preds, gold)[0])
    assert m["score"] == pytest.approx((m["metrics"]["pearson"] + m["metrics"]["spearman"]) / 2)
    assert m["predicted"] == {"0": 1, "1": 1, "2": 2, "3": 1, "4": 0, "5": 2}


def test_cola_mcc_mrpc_f1_of_the_positive_label_and_mnli_splits():
    cola = tasks.get_task("glue/cola")
    labels, preds = [0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 1]
    exs = [_ex("glue/cola", y, cola.choices) for y in labels]
    m = task_metrics(cola, _fake_scores(cola, exs, preds))[0][LOGPROB]
    assert m["official"] == ["mcc"] and m["metrics"]["mcc"] == pytest.approx(mcc(preds, labels))
    assert m["metrics"]["accuracy"] == pytest.approx(5 / 6)  # reported beside, not in the score

    mrpc = tasks.get_task("glue/mrpc")
    assert mrpc.positive_label == 1
    exs = [_ex("glue/mrpc", y, mrpc.choices) for y in labels]
    m = task_metrics(mrpc, _fake_scores(mrpc, exs, preds))[0][LOGPROB]
    tp, fp, fn = 3, 0, 1
    assert m["metrics"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["score"] == pytest.approx((m["metrics"]["f1"] + m["metrics"]["accuracy"]) / 2)

    mnli = tasks.get_task("glue/mnli")
    splits = ["validation_matched"] * 4 + ["validation_mismatched"] * 2
    labels, preds = [0, 1, 2, 0, 1, 2], [0, 1, 2, 2, 0, 0]
    exs = [_ex("glue/mnli", y, mnli.choices, split=s) for y, s in zip(labels, splits)]
    m = task_metrics(mnli, _fake_scores(mnli, exs, preds))[0][LOGPROB]
    assert m["official"] == ["accuracy_matched", "accuracy_mismatched"]
    assert m["metrics"]["accuracy_matched"] == 0.75 and m["metrics"]["accuracy_mismatched"] == 0.0
    assert m["metrics"]["accuracy"] == pytest.approx(0.5)


def test_ties_are_broken_to_the_first_choice_and_counted_and_a_yes_sayer_shows():
    spec = tasks.get_task("glue/rte")
    exs = [_ex("glue/rte", y, spec.choices) for y in [0, 1, 1, 0]]
    scores = ChoiceScores(exs, logprob=[[0.5, 0.5]] * 4, logprob_sum=[[0.5, 0.5]] * 4,
                          rewards={"h": [[0.0, 1.0]] * 4})
    blocks, preds = task_metrics(spec, scores)
    assert blocks[LOGPROB]["ties"] == 4 and preds[LOGPROB] == [0, 0, 0, 0]
    assert blocks["dph:h"]["ties"] == 0
    assert blocks["dph:h"]["predicted"] == {"yes": 0, "no": 4}
    assert blocks["dph:h"]["majority_choice"] == "no" and blocks["dph:h"]["majority_fraction"] == 1.0


def test_pairs_count_a_tie_as_a_miss():
    spec = tasks.get_task("hh_rlhf")
    exs = [_ex("hh_rlhf", 0, ["good", "bad"]) for _ in range(4)]
    scores = ChoiceScores(exs, logprob=[[1, 0], [0, 1], [2, 2], [3, 1]], logprob_sum=[[0, 0]] * 4)
    m = task_metrics(spec, scores)[0][LOGPROB]
    assert m["metrics"]["pair_accuracy"] == 0.5 and m["ties"] == 1
    # the distribution agrees with the accuracy: the tie is shown as one, not as "chosen"
    assert m["predicted"] == {"chosen": 2, "rejected": 1, "tie": 1}
    flat = task_metrics(spec, ChoiceScores(exs, logprob=[[0, 0]] * 4, logprob_sum=[[0, 0]] * 4))[0][LOGPROB]
    assert flat["metrics"]["pair_accuracy"] == 0.0 and flat["majority_choice"] == "tie"


def test_calibration_only_for_separable_heads_and_matches_sigmoid():
    spec = tasks.get_task("glue/rte")
    exs = [_ex("glue/rte", y, spec.choices) for y in [0, 1]]
    r = [[2.0, -1.0], [0.5, 0.0]]
    scores = ChoiceScores(exs, logprob=r, logprob_sum=r, rewards={"sep": r, "con": r})
    blocks, _ = task_metrics(spec, scores, separable=["sep"])
    assert "calibration" not in blocks["dph:con"] and "calibration" not in blocks[LOGPROB]
    cal = blocks["dph:sep"]["calibration"]
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5, 0.0])))
    y = np.array([1, 0, 0, 1])
    assert cal["brier"] == pytest.approx(float(np.mean((p - y) ** 2)))
    assert cal["n_candidates"] == 4 and sum(b["count"] for b in cal["bins"]) == 4


def _block(score, n=10, **metrics):
    return {"n": n, "methods": {"m": {"score": score, "metrics": metrics or {"accuracy": score},
                                      "official": list(metrics or {"accuracy": 0})}}}


def test_aggregates_glue_with_and_without_wnli_gpt4all_and_race():
    res = {"glue/cola": _block(0.2, mcc=0.2), "glue/mrpc": _block(0.7, accuracy=0.8, f1=0.6),
           "glue/mnli": _block(0.5, accuracy_matched=0.6, accuracy_mismatched=0.4, accuracy=0.5),
           "glue/wnli": _block(0.3), "arc_easy": _block(0.6), "boolq": _block(0.8),
           "race/middle": _block(0.5, n=30), "race/high": _block(0.8, n=10)}
    res["glue/mnli"]["methods"]["m"]["official"] = ["accuracy_matched", "accuracy_mismatched"]
    agg = aggregates(res, ["m"])
    assert agg["glue"]["values"]["m"] == pytest.approx(np.mean([0.2, 0.7, 0.5, 0.3]))
    assert agg["glue_no_wnli"]["values"]["m"] == pytest.approx(np.mean([0.2, 0.7, 0.5]))
    assert agg["glue_no_wnli"]["values"]["m"] == pytest.approx(glue_score(
        {"cola": {"mcc": 0.2}, "mrpc": {"a": 0.8, "f": 0.6}, "mnli_m": {"a": 0.6}, "mnli_mm": {"a": 0.4}}, False))
    assert agg["glue"]["partial"] and "glue/qqp" in agg["glue"]["missing"]
    assert agg["gpt4all"]["values"]["m"] == pytest.approx(0.7) and agg["gpt4all"]["partial"]
    assert agg["race"]["values"]["m"] == pytest.approx(race_score(0.5, 30, 0.8, 10)) == pytest.approx(0.575)
    assert not agg["race"]["partial"]
    assert "glue" not in aggregates({"glue/cola": _block(0.2, mcc=0.2)}, ["m"])  # no WNLI: only glue_no_wnli


# ----------------------------------------------------------------------------- scoring on tiny models

EXAMPLES = [
    Example("a", [{"role": "user", "content": "Question: what is the capital of France?"}], ["Paris", "London", "A. Rome"], 0, "t"),
    Example("b", [{"role": "system", "content": "Below is an instruction."}, {"role": "user", "content": "hello world"}],
            ["yes", "no"], 1, "t"),
    Example("c", [{"role": "user", "content": "The quick brown fox " * 8}], ["jumps over the lazy dog", "no", "yes", "4"], 2, "t"),
    Example("d", [{"role": "user", "content": "Sentence 1 Sentence 2"}], ["positive", "negative"], 0, "t"),
]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_eval_scores_invariant_to_batching_padding_and_shared_prefix(family):
    pm = with_heads(tiny_pm(family))
    ref = score_examples(pm, EXAMPLES)
    ref_preds = summarize(ref)
    for max_tokens in (16, 100_000):
        pm.max_tokens = max_tokens
        for kw in ({"shared_prefix": True}, {"shared_prefix": False, "padding_side": "right"},
                   {"shared_prefix": False, "padding_side": "left"}, {"shared_prefix": True, "chunk_size": 1}):
            got = score_examples(pm, EXAMPLES, **kw)
            for name, table in ref.methods().items():
                flat = [v for row in table for v in row]
                assert np.allclose([v for row in got.methods()[name] for v in row], flat, atol=1e-4), (max_tokens, kw, name)
            got_preds = summarize(got)
            for name in ref.methods():
                assert got_preds[name]["predicted"] == ref_preds[name]["predicted"], (max_tokens, kw, name)


def test_heads_score_in_eval_mode_and_fp32_and_match_pm_score():
    pm = with_heads(tiny_pm())
    assert pm.heads["sep"].training  # dropout 0.3 would make scores random in training mode
    a = score_examples(pm, EXAMPLES)
    b = score_examples(pm, EXAMPLES)
    assert a.rewards == b.rewards and pm.heads["sep"].training  # mode restored
    for ex, row in zip(EXAMPLES, a.rewards["sep"]):
        want = pm.score(ex.prompt, ex.choices, head="sep")
        assert want.dtype == torch.float32
        assert np.allclose(row, want.tolist(), atol=1e-5)
    feats = pm.features([EXAMPLES[0].prompt] * 3, EXAMPLES[0].choices, logprobs=True)
    assert all(s.dtype == torch.float32 for s in feats.states.values())
    assert np.allclose(a.logprob[0], (feats.logprob_sum / feats.n_tokens).tolist(), atol=1e-5)


def test_logprob_only_without_heads():
    pm = tiny_pm()
    s = score_examples(pm, EXAMPLES)
    assert list(s.methods()) == [LOGPROB] and len(s.logprob) == len(EXAMPLES)
    with pytest.raises(ValueError, match="nothing to compute"):
        score_examples(pm, EXAMPLES, logprobs=False)


# ----------------------------------------------------------------------------- evaluate + files


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("pairs") / "prefs.jsonl"
    # odd rows: replies of similar length (13·k against 12·k characters)
    rows = [{"prompt": f"question {i}?", "chosen": "yes, because " * (i % 3 + 1),
             "rejected": "no, because " * (i % 3 + 1) if i % 2 else "no"} for i in range(6)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture(scope="module")
def run(pairs_file):
    pm = with_heads(tiny_pm())
    return pm, evaluate(pm, ["openbookqa", f"pairs:{pairs_file}"], data_dir="bundled", max_eval=6, seed=3)


def test_evaluate_results_schema(run, pairs_file):
    pm, r = run
    res = r.results
    assert res["schema"] == "prefheads-eval" and res["schema_version"] == 1
    assert res["methods"] == ["logprob", "lm-eval:acc", "lm-eval:acc_norm", "lm-eval:mean", "length", "dph:sep", "dph:con"]
    assert res["config"]["bootstrap"] == 1000
    assert res["heads"]["names"] == ["sep", "con"] and res["heads"]["heads"]["sep"]["objective"] == "separable"
    obqa = res["tasks"]["openbookqa"]
    assert obqa["template_hash"] == tasks.get_task("openbookqa").template_hash()
    assert obqa["n"] == 6 and obqa["splits"] == {"test": 6} and obqa["n_candidates"] == 24
    assert set(obqa["seconds"]) == {"load", "score", "total"}
    assert "calibration" in obqa["methods"]["dph:sep"] and "calibration" not in obqa["methods"]["dph:con"]
    for block in obqa["methods"].values():
        assert sum(block["predicted"].values()) == 6 and "ties" in block
    prefs = res["tasks"][f"pairs:{pairs_file}"]
    assert prefs["kind"] == "pairs" and "pair_accuracy" in prefs["methods"]["dph:sep"]["metrics"]
    assert res["aggregates"]["gpt4all"]["partial"]
    assert len(r.records) == 12
    rec = r.records[0]
    assert set(rec) >= {"id", "task", "label", "scores", "pred"} and len(rec["scores"]["dph:sep"]) == 4


def test_max_eval_is_a_seeded_subset(run):
    pm, r = run
    ids = [x["id"] for x in r.records if x["task"] == "openbookqa"]
    again = evaluate(pm, ["openbookqa"], data_dir="bundled", max_eval=6, seed=3, heads=[])
    other = evaluate(pm, ["openbookqa"], data_dir="bundled", max_eval=6, seed=4, heads=[])
    assert [x["id"] for x in again.records] == ids
    assert [x["id"] for x in other.records] != ids
    assert again.results["methods"] == ["logprob", "lm-eval:acc", "lm-eval:acc_norm", "lm-eval:mean"]
    assert again.results["tasks"]["openbookqa"]["methods"]["logprob"] == r.results["tasks"]["openbookqa"]["methods"]["logprob"]


def test_lmeval_baseline_scores_the_same_rows_as_the_harness(run, pairs_file):
    from prefheads.eval.lmeval import score_lmeval

    pm, r = run
    obqa = r.results["tasks"]["openbookqa"]
    assert obqa["lm_eval"]["available"] and obqa["lm_eval"]["harness"].startswith("lm_eval==")
    ids = [x["id"] for x in r.records if x["task"] == "openbookqa"]
    lexs = {ex.id: ex for ex in tasks.load_examples("openbookqa", "eval", "bundled", variant="lm-eval")}
    direct = score_lmeval(pm, [lexs[i] for i in ids])
    recs = [x for x in r.records if x["task"] == "openbookqa"]
    for j, rec in enumerate(recs):
        assert np.allclose(rec["scores"]["lm-eval:acc"], direct.logprob_sum[j], atol=1e-5)
    summary = direct.summary()
    for m in ("acc", "acc_norm", "mean"):
        assert obqa["methods"][f"lm-eval:{m}"]["metrics"]["accuracy"] == pytest.approx(summary[m])
    # the baseline is the strongest log-prob method; each head is measured against it
    logp = {m: b["score"] for m, b in obqa["methods"].items() if not m.startswith("dph:")}
    assert obqa["baseline"]["score"] == max(logp.values()) and obqa["baseline"]["method"] in logp
    for h in ("dph:sep", "dph:con"):
        assert obqa["methods"][h]["vs_baseline"] == pytest.approx(obqa["methods"][h]["score"] - max(logp.values()))
    prefs = r.results["tasks"][f"pairs:{pairs_file}"]
    assert prefs["lm_eval"]["available"] is False and "lm-eval:acc" not in prefs["methods"]
    header, rows = comparison_rows([r.results])
    vs = next(row for row in rows if row[1] == "vs baseline (pts)")
    assert vs[header.index(obqa["baseline"]["method"])] == "baseline"
    lo, hi = obqa["methods"]["dph:sep"]["vs_baseline_ci"]
    margin = obqa["methods"]["dph:sep"]["vs_baseline"]
    assert vs[header.index("dph:sep")] == f"{100 * margin:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _correct(rec, method, kind):
    s = rec["scores"][method]
    return s[0] > s[1] if kind == "pairs" else rec["pred"][method] == rec["label"]


def test_margins_with_interval_and_mcnemar_match_the_records(run, pairs_file):
    from prefheads.eval.margins import SIMILAR_KEY, mcnemar_p, paired_interval

    _, r = run
    start, by_task = 0, {}
    for name, t in r.results["tasks"].items():  # records come task by task, in order
        recs = by_task[name] = r.records[start: start + t["n"]]
        start += t["n"]
        base = t["baseline"]["method"]
        assert t["bootstrap"] == {"resamples": 1000, "seed": 3, "confidence": 0.95}
        b = np.array([_correct(x, base, t["kind"]) for x in recs], dtype=float)
        for h in ("dph:sep", "dph:con"):
            block = t["methods"][h]
            lo, hi = block["vs_baseline_ci"]
            assert lo <= block["vs_baseline"] <= hi
            a = np.array([_correct(x, h, t["kind"]) for x in recs], dtype=float)
            # the recorded interval is the paired bootstrap of these examples, seeded by the run's seed
            assert block["vs_baseline"] == pytest.approx(a.mean() - b.mean())
            assert [lo, hi] == pytest.approx(paired_interval(a, b, len(recs), seed=3))
            assert block["vs_baseline_p"] == pytest.approx(mcnemar_p(a, b))
    prefs = r.results["tasks"][f"pairs:{pairs_file}"]
    # the longer reply is always the chosen one, except on a tie: the length baseline
    assert prefs["methods"]["length"]["score"] == 1.0 and prefs["baseline"]["method"] == "length"
    assert prefs["similar_length"] == {"n": 3, "tolerance": 0.2, "unit": "characters"}
    recs = by_task[f"pairs:{pairs_file}"]
    similar = [x for x in recs if abs(x["scores"]["length"][0] - x["scores"]["length"][1]) <= 0.2 * max(x["scores"]["length"])]
    for m, block in prefs["methods"].items():
        assert block["metrics"][SIMILAR_KEY] == pytest.approx(np.mean([_correct(x, m, "pairs") for x in similar]))
    assert "similar_length" not in r.results["tasks"]["openbookqa"]


def test_subset_first_takes_the_first_rows_like_the_harness_limit():
    pm = tiny_pm()
    r = evaluate(pm, ["openbookqa"], data_dir="bundled", max_eval=5, subset="first", lm_eval_baseline=False)
    want = [ex.id for ex in tasks.load_examples("openbookqa", "eval", "bundled", limit=5)]
    assert [x["id"] for x in r.records] == want and r.results["config"]["subset"] == "first"
    with pytest.raises(ValueError, match="subset"):
        evaluate(pm, ["openbookqa"], data_dir="bundled", max_eval=5, subset="last")


def test_lmeval_template_and_opt_out():
    pm = tiny_pm()
    off = evaluate(pm, ["openbookqa"], data_dir="bundled", max_eval=4, lm_eval_baseline=False)
    assert off.results["methods"] == ["logprob"] and "lm_eval" not in off.results["tasks"]["openbookqa"]
    on = evaluate(pm, ["openbookqa"], data_dir="bundled", max_eval=4, variant="lm-eval", lm_eval_baseline=False)
    t = on.results["tasks"]["openbookqa"]
    assert t["variant"] == "lm-eval" and "lm-eval:acc_norm" in t["methods"]
    assert t["template_hash"] == tasks.get_task("openbookqa", "lm-eval").template_hash()
    assert [x["id"] for x in on.records] == [x["id"] for x in off.records]
    with pytest.raises(ValueError, match="glue/stsb: no 'lm-eval' template"):
        evaluate(pm, ["openbookqa", "glue/stsb"], data_dir="bundled", max_eval=2, variant="lm-eval")
    part = evaluate(pm, ["openbookqa", "glue/stsb"], data_dir="bundled", max_eval=2, variant="lm-eval",
                    skip_missing=True)
    assert list(part.results["tasks"]) == ["openbookqa"] and "glue/stsb" in part.results["missing"]


def test_save_and_load_round_trip(run, tmp_path):
    _, r = run
    out = save_run(r, tmp_path / "res" / "results.json")
    assert (tmp_path / "res" / "results.examples.jsonl").is_file()
    res = load_results(out)
    assert res["examples_file"] == "results.examples.jsonl"
    assert load_records(out) == json.loads(json.dumps(r.records))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not a prefheads eval results file"):
        load_results(bad)
    bad.write_text(json.dumps({"schema": "prefheads-eval", "schema_version": 99}))
    with pytest.raises(ValueError, match="newer"):
        load_results(bad)


def test_missing_data_raises_or_is_skipped_and_marks_partial(tmp_path):
    pm = tiny_pm()
    with pytest.raises(FileNotFoundError):
        evaluate(pm, ["glue/rte"], data_dir=tmp_path)
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    rte.joinpath("dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat.\tA cat sat.\tentailment\n"
                                       "1\tDogs bark.\tCats bark.\tnot_entailment\n")
    r = evaluate(pm, ["glue/rte", "glue/cola"], data_dir=tmp_path, skip_missing=True)
    assert list(r.results["tasks"]) == ["glue/rte"] and "glue/cola" in r.results["missing"]
    agg = r.results["aggregates"]["glue_no_wnli"]
    assert agg["partial"] and agg["tasks"] == ["glue/rte"] and "glue/cola" in agg["missing"]


def test_mnli_matched_and_mismatched_are_scored_separately(tmp_path):
    d = tmp_path / "glue" / "MNLI"
    d.mkdir(parents=True)
    head = "sentence1\tsentence2\tgold_label\n"
    d.joinpath("dev_matched.tsv").write_text(head + "A man.\tA person.\tentailment\nIt rains.\tIt is dry.\tcontradiction\n")
    d.joinpath("dev_mismatched.tsv").write_text(head + "Red car.\tA car.\tentailment\n")
    r = evaluate(with_heads(tiny_pm()), ["glue/mnli"], data_dir=tmp_path)
    t = r.results["tasks"]["glue/mnli"]
    assert t["splits"] == {"validation_matched": 2, "validation_mismatched": 1}
    assert t["methods"]["dph:sep"]["official"] == ["accuracy_matched", "accuracy_mismatched"]


def test_real_data_formats(shared_data):
    r = evaluate(tiny_pm(), ["glue/stsb", "glue/mrpc", "boolq", "race/high", "race/middle"], data_dir=shared_data,
                 max_eval=2, seed=0, skip_missing=True)
    t = r.results["tasks"]
    assert t["glue/stsb"]["choices"] == ["0", "1", "2", "3", "4", "5"]
    assert all("gold_score" in x for x in r.records if x["task"] == "glue/stsb")
    assert set(t["glue/mrpc"]["methods"]["logprob"]["metrics"]) == {"accuracy", "f1"}
    if "race/middle" in t and "race/high" in t:
        assert not r.results["aggregates"]["race"]["partial"]


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved as a folder and a head folder trained on it (as from_pretrained loads them)."""
    root = tmp_path_factory.mktemp("cli")
    pm = tiny_pm()
    pm.backbone.save_pretrained(root / "base")
    pm.tokenizer.save_pretrained(root / "base")
    pm = PreferenceModel.from_pretrained(str(root / "base"))
    with_heads(pm).save_heads(root / "heads")
    return root


def test_cli_eval_refuses_what_it_would_ignore_and_quotes_names_whole(saved, tmp_path):
    from prefheads.cli import app

    common = ["eval", "--base", str(saved / "base"), "--task", "openbookqa", "--data-dir", "bundled",
              "--max-eval", "2", "--no-progress"]
    res = CliRunner().invoke(app, common + ["--examples-out", str(tmp_path / "ex.jsonl")])
    assert res.exit_code != 0 and "--examples-out" in res.output and not (tmp_path / "ex.jsonl").exists()
    res = CliRunner().invoke(app, common + ["--subset", "bogus"])
    assert res.exit_code == 2 and "'bogus'" in res.output  # the closing quote kept


def test_cli_eval_writes_results_and_compares(saved, tmp_path):
    from prefheads.cli import app

    runner = CliRunner()
    base = str(saved / "base")
    res = runner.invoke(app, ["eval", "--heads", str(saved / "heads"), "--base", base, "--task", "openbookqa",
                              "--data-dir", "bundled", "--max-eval", "4", "--out", str(tmp_path / "a.json"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "openbookqa" in res.output and "dph:sep" in res.output and "predicted" in res.output
    assert "lm-eval:acc_norm" in res.output and "baseline to beat" in res.output
    assert "paired bootstrap over examples, 1000 resamples, seed 0" in res.output and "McNemar p" in res.output
    a = load_results(tmp_path / "a.json")["tasks"]["openbookqa"]["methods"]["dph:sep"]
    assert a["vs_baseline_ci"][0] <= a["vs_baseline"] <= a["vs_baseline_ci"][1]
    res = runner.invoke(app, ["eval", "--base", base, "--task", "openbookqa", "--data-dir", "bundled",
                              "--max-eval", "4", "--out", str(tmp_path / "b.json"), "--no-progress",
                              "--no-lm-eval-baseline", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert load_results(tmp_path / "b.json")["methods"] == ["logprob"]
    assert load_results(tmp_path / "b.json")["config"]["bootstrap"] == 0
    res = runner.invoke(app, ["eval", "--base", base, "--task", "openbookqa", "--data-dir", "bundled",
                              "--max-eval", "4", "--out", str(tmp_path / "c.json"), "--no-progress",
                              "--template", "lm-eval", "--no-lm-eval-baseline"])
    assert res.exit_code == 0, res.output
    c = load_results(tmp_path / "c.json")
    assert c["config"]["variant"] == "lm-eval" and "lm-eval:acc" in c["methods"]
    res = runner.invoke(app, ["eval", "--base", base, "--task", "glue/stsb", "--data-dir", "bundled",
                              "--template", "lm-eval", "--no-progress"])
    assert res.exit_code == 2 and "defines no such task" in res.output and "--skip-missing" in res.output
    res = runner.invoke(app, ["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    assert "a dph:sep" in res.output and "b logprob" in res.output and "[gpt4all]" in res.output
    res = runner.invoke(app, ["eval", "--base", base, "--task", "glue/rte", "--data-dir", str(tmp_path), "--no-progress"])
    assert res.exit_code == 2 and "--skip-missing" in res.output
    res = runner.invoke(app, ["eval", "--compare"])
    assert res.exit_code != 0 and "results files" in res.output
    res = runner.invoke(app, ["eval", "--base", base])
    assert res.exit_code != 0 and "--task" in res.output


def test_demo_reports_both_baselines_and_the_head(saved, tmp_path, capsys):
    from prefheads.demo import run_demo

    s = run_demo(out=tmp_path / "demo", max_train=8, max_eval=6, epochs=1, base=str(saved / "base"), progress=False)
    assert s["n"] == 6 and {"logprob", "lm-eval:acc", "lm-eval:acc_norm", "dph:openbookqa"} <= set(s)
    for m in ("logprob", "lm-eval:acc", "dph:openbookqa"):
        assert sum(s[m]["predicted"].values()) == 6
    logp = [m for m in s if isinstance(s[m], dict) and "accuracy" in s[m] and not m.startswith("dph:")]
    # log-prob in the chat turn (mean and sum) under both template families, and the harness's scoring
    assert set(logp) == {"logprob", "logprob_sum", "paper:logprob", "paper:logprob_sum", "lm-eval:acc",
                         "lm-eval:acc_norm", "lm-eval:mean"}
    base = max(logp, key=lambda m: s[m]["accuracy"])
    assert s["baseline"] == {"method": base, "score": s[base]["accuracy"]}
    head = s["dph:openbookqa"]
    assert head["vs_baseline"] == pytest.approx(head["accuracy"] - s[base]["accuracy"])
    lo, hi = head["vs_baseline_ci"]
    assert lo <= head["vs_baseline"] <= hi and 0 <= head["vs_baseline_p"] <= 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "strongest log-prob baseline" in last and f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" in last
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["baseline"]["method"] == base


def test_cli_bootstrap_default_is_the_library_default():
    import inspect

    from prefheads.commands.evaluate import eval_command
    from prefheads.eval import evaluate_task
    from prefheads.eval.margins import N_RESAMPLES

    assert inspect.signature(eval_command).parameters["bootstrap"].default == N_RESAMPLES
    assert inspect.signature(evaluate).parameters["bootstrap"].default == N_RESAMPLES
    assert inspect.signature(evaluate_task).parameters["bootstrap"].default == N_RESAMPLES
