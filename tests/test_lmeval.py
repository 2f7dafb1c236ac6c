"""The ``lm-eval`` template family and harness-style scoring (prefheads.eval.lmeval).

Expected strings are written out by hand from lm-evaluation-harness v0.4.13's task files
(``lm_eval/tasks/<task>/...yaml``): zero-shot context = ``doc_to_text``, continuation =
``" " + choice`` (WinoGrande: one context per option, the text after the blank as continuation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_backbone, make_tokenizer
from prefheads import tasks as T
from prefheads.chat import detect_format, encode
from prefheads.eval.lmeval import encode_examples, encode_pair, score_lmeval, tok_encode
from prefheads.model import PreferenceModel
from prefheads.tasks.spec import SpecError

HARNESS_TASKS = ["arc_challenge", "arc_easy", "boolq", "glue/cola", "glue/mnli", "glue/mrpc", "glue/qnli",
                 "glue/qqp", "glue/rte", "glue/sst2", "glue/wnli", "hellaswag", "openbookqa", "piqa", "winogrande"]


@pytest.fixture
def data(shared_data: Path) -> Path:
    return shared_data


def first(name: str, data: Path):
    exs = T.load_examples(name, data_dir=data, limit=1, variant="lm-eval")
    assert len(exs) == 1
    return exs[0]


def check(ex, context: str, choices: list[str], label: int, *, doc_choices: list[str] | None = None):
    """A plain (one-context) harness task: user turn = context, continuations = " " + choice."""
    assert ex.prompt == [{"role": "user", "content": context}]  # no system prompt
    assert ex.choices == choices
    assert ex.label == label
    req = ex.meta["lmeval"]
    assert req["contexts"] == [context] * len(choices)
    assert req["continuations"] == [" " + c for c in (doc_choices or choices)]
    assert req["doc_choices"] == (doc_choices or choices)
    assert req["harness"].startswith("lm_eval==0.4.13:")


# ---------------------------------------------------------------------------- registry


def test_lm_eval_variant_exists_exactly_where_the_harness_has_the_task():
    have = [n for n in T.list_tasks() if T.get_task(n).lm_eval is not None]
    assert have == HARNESS_TASKS
    for n in have:
        spec = T.get_task(n, variant="lm-eval")
        assert spec.variant == "lm-eval" and spec.system is None and len(spec.user) == 1
        assert spec.template_hash() != T.get_task(n).template_hash()
        assert T.describe(n)["lm_eval"] == spec.lm_eval.task
    with pytest.raises(SpecError, match="lm-evaluation-harness 0.4.13 defines no such task"):
        T.get_task("glue/stsb", variant="lm-eval")  # the harness's GLUE has no STS-B


def test_lm_eval_block_is_validated():
    from prefheads.tasks.catalog import task_from_dict

    base = {"name": "t", "adapter": "fields", "local": {"reader": "tsv", "files": {"train": "a", "validation": "b"},
                                                         "fields": {"sentence": "s"}},
            "user": ["{sentence}"], "choices": ["no", "yes"]}
    ok = {"task": "t", "source": "x", "context": "{sentence}\nAnswer:", "choices": ["no", "yes"]}
    assert task_from_dict({**base, "lm_eval": ok}).lm_eval.choices == ("no", "yes")
    for bad, msg in [({"colour": 1}, "unknown key"), ({"context": "{nope}"}, "does not provide"),
                     ({"choice": "{text}"}, "exactly one of"), ({"metrics": ["bleu"]}, "unknown harness metric"),
                     ({"prep": "zzz"}, "unknown prep")]:
        with pytest.raises(SpecError, match=msg):
            task_from_dict({**base, "lm_eval": {**ok, **bad}})


# ---------------------------------------------------------------------------- rendering (real data)


def test_arc_easy(data):
    check(first("arc_easy", data),
          "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
          ["Sunlight is the source of energy for nearly all ecosystems.",
           "Most ecosystems are found on land instead of in water.",
           "Carbon dioxide is more available than other gases.", "The producers in all ecosystems are plants."], 0)


def test_arc_challenge(data):
    check(first("arc_challenge", data),
          "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
          "most likely effect of this increase in rotation?\nAnswer:",
          ["Planetary density will decrease.", "Planetary years will become longer.",
           "Planetary days will become shorter.", "Planetary gravity will become stronger."], 2)


def test_openbookqa_context_is_the_bare_stem(data):
    check(first("openbookqa", data),
          "A person wants to start saving money so that they can afford a nice vacation at the end of the year. "
          "After looking over their budget and expenses, they decide the best way to save money is to",
          ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
           "have lunch with friends"], 1)


def test_boolq(data):
    row = json.loads((data / "boolq" / "dev.jsonl").read_text(encoding="utf-8").splitlines()[0])
    ex = first("boolq", data)
    assert row["question"] == "does ethanol take more energy make that produces"
    check(ex, f"{row['passage']}\nQuestion: does ethanol take more energy make that produces?\nAnswer:",
          ["no", "yes"], 0)
    assert ex.meta["lmeval"]["contexts"][0].startswith("All biomass goes through at least some of these steps")


def test_piqa(data):
    check(first("piqa", data), "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
          ["Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you "
           "will also need to supply it with a water bottle and a food dish.",
           "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you "
           "will also need to supply it with a water bottle and a food dish."], 0)


def test_winogrande_partial_scoring(data):
    ex = first("winogrande", data)
    # chat path: sentence up to the blank, completed by each option
    assert ex.prompt == [{"role": "user", "content": "Sarah was a much better surgeon than Maria so"}]
    assert ex.choices == ["Sarah always got the easier cases.", "Maria always got the easier cases."]
    assert ex.label == 1
    req = ex.meta["lmeval"]  # harness: a context per option, one shared continuation
    assert req["contexts"] == ["Sarah was a much better surgeon than Maria so Sarah",
                               "Sarah was a much better surgeon than Maria so Maria"]
    assert req["continuations"] == [" always got the easier cases."] * 2
    assert req["doc_choices"] == req["contexts"]  # doc_to_choice returns the contexts
    assert "1: 'Sarah was a much better surgeon than Maria so Maria' + ' always got the easier cases.'" in T.render(ex)


def test_glue_rte(data):
    check(first("glue/rte", data),
          "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to "
          "the Christopher Reeve Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:",
          ["True", "False"], 1)  # not_entailment


def test_glue_sst2_keeps_the_trailing_space_of_the_sentence(data):
    check(first("glue/sst2", data),
          "it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:",
          ["negative", "positive"], 1)


def test_glue_cola(data):
    check(first("glue/cola", data),
          "The sailors rode the breeze clear of the rocks.\nQuestion: Does this sentence make sense?\nAnswer:",
          ["no", "yes"], 1)


def test_glue_mrpc(data):
    check(first("glue/mrpc", data),
          "Sentence 1: He said the foodservice pie business doesn't fit the company's long-term growth strategy.\n"
          "Sentence 2: \"The foodservice pie business does not fit our long-term growth strategy.\n"
          "Question: Do both sentences mean the same thing?\nAnswer:", ["no", "yes"], 1)


def test_glue_qnli(data):
    check(first("glue/qnli", data),
          "What came into force after the new constitution was herald?\nAs of that day, the new constitution "
          "heralding the Second Republic came into force.\nQuestion: Does this response answer the question?\n"
          "Answer:", ["yes", "no"], 0)


def test_glue_wnli(data):
    check(first("glue/wnli", data),
          "The drain is clogged with hair. It has to be cleaned.\nQuestion: The hair has to be cleaned. "
          "True or False?\nAnswer:", ["False", "True"], 0)


# ---------------------------------------------------------------------------- rendering (synthetic rows)


def test_mnli_and_qqp_from_synthetic_files(tmp_path: Path):
    mnli = tmp_path / "glue" / "MNLI"
    mnli.mkdir(parents=True)
    rows = "sentence1\tsentence2\tgold_label\nThe cat sat.\t A cat sat \tentailment\nA dog.\tNo dog.\tcontradiction\n"
    for f in ("dev_matched.tsv", "dev_mismatched.tsv"):
        (mnli / f).write_text(rows, encoding="utf-8")
    exs = T.load_examples("glue/mnli", data_dir=tmp_path, variant="lm-eval")
    assert [e.meta["split"] for e in exs] == ["validation_matched"] * 2 + ["validation_mismatched"] * 2
    # utils.doc_to_text: the hypothesis stripped and ending in exactly one full stop
    tfn = ["True", "Neither", "False"]
    check(exs[0], "The cat sat.\nQuestion: A cat sat. True, False or Neither?\nAnswer:", tfn, 0)
    check(exs[1], "A dog.\nQuestion: No dog. True, False or Neither?\nAnswer:", tfn, 2)
    qqp = tmp_path / "glue" / "QQP"
    qqp.mkdir()
    (qqp / "dev.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhy?\tHow?\t0\n",
                                 encoding="utf-8")
    check(T.load_examples("glue/qqp", split="validation", data_dir=tmp_path, variant="lm-eval")[0],
          "Question 1: Why?\nQuestion 2: How?\nQuestion: Do both questions ask the same thing?\nAnswer:",
          ["no", "yes"], 0)


def test_hellaswag_preprocessing(tmp_path: Path):
    row = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
           "ctx_b": "then", "ctx": "Then, the man writes over the snow. then",
           "endings": [" [header] cleans the window [title] Wipe it.", "  drives  away. "], "label": 1}
    p = tmp_path / "val.jsonl"
    p.write_text(json.dumps(row) + "\n", encoding="utf-8")
    ex = T.load_examples("hellaswag", path=p, variant="lm-eval")[0]
    # utils.process_docs: "{activity}: {ctx_a} {Ctx_b}", " [title]" -> ". ", [tags] dropped, "  " -> " "
    check(ex, "Removing ice from car: Then, the man writes over the snow. Then",
          ["cleans the window. Wipe it.", "drives away."], 1,
          doc_choices=[" cleans the window. Wipe it.", "drives away."])


def test_lm_eval_examples_are_valid_chat_examples(data, tok):
    """The default (chat) path: harness context in the user turn, reply = stripped continuation."""
    fmt = detect_format(tok)
    for name in ("arc_easy", "winogrande", "boolq"):
        ex = first(name, data)
        for c in ex.choices:
            enc = encode(tok, fmt, ex.prompt, c)
            assert enc.ids[-1] == fmt.reward_token_id and 0 < enc.prompt_len < len(enc.ids)
    pairs = T.load_pairs("arc_easy", split="test", data_dir=data, limit=2, variant="lm-eval")
    assert pairs[0].chosen == "Sunlight is the source of energy for nearly all ecosystems."


# ---------------------------------------------------------------------------- encoding


def test_encode_pair_moves_trailing_whitespace_onto_the_continuation(tok):
    a = encode_pair(tok, "Question: what is the capital?\nAnswer: ", "Paris")
    b = encode_pair(tok, "Question: what is the capital?\nAnswer:", " Paris")
    assert a == b
    ctx, cont, bad = b
    whole = tok.encode("Question: what is the capital?\nAnswer: Paris")
    assert ctx == tok.encode("Question: what is the capital?\nAnswer:") and ctx + cont == whole and not bad


def test_encode_pair_prefix_mismatch_keeps_the_harness_split(tok):
    # "Hel" is one token and "Hello" another: the joint encoding does not start with enc("Hel")
    assert tok.convert_ids_to_tokens(tok.encode("Hel")) == ["Hel"]
    whole = tok.encode("Hello world")
    ctx, cont, bad = encode_pair(tok, "Hel", "lo world")
    assert bad and ctx == tok.encode("Hel") and cont == whole[1:]  # what the harness feeds the model
    with pytest.raises(ValueError, match="no tokens of its own"):
        encode_pair(tok, "Hel", "lo")  # the whole continuation merged into the context token


def test_bos_handling_follows_hflm():
    tok = make_tokenizer()
    tok.bos_token = "<|im_start|>"
    bos = tok.bos_token_id
    assert tok.encode("Answer: yes")[0] != bos  # this tokenizer adds no BOS by itself (like SmolLM2)
    ctx, cont, _ = encode_pair(tok, "Answer:", " yes", prefix_id=bos)  # HFLM default: tokenizer's own
    assert ctx == tok.encode("Answer:")
    ctx_b, cont_b, _ = encode_pair(tok, "Answer:", " yes", add_bos=True, prefix_id=bos)
    assert ctx_b == [bos, *ctx] and cont_b == cont
    # a context already starting with the BOS text gets no second one
    assert tok_encode(tok, "<|im_start|>Answer:", add_bos=True, prefix_id=bos).count(bos) == 1
    # an empty context is the prefix token alone
    assert encode_pair(tok, "", " yes", prefix_id=bos) == ([bos], tok.encode(" yes"), False)


# ---------------------------------------------------------------------------- scoring


def _examples(data: Path):
    return (list(T.load_examples("arc_easy", data_dir=data, limit=3, variant="lm-eval"))
            + list(T.load_examples("winogrande", data_dir=data, limit=2, variant="lm-eval"))
            + list(T.load_examples("glue/rte", data_dir=data, limit=2, variant="lm-eval")))


def _hand_scores(model, tok, exs):
    """A plain loop: harness split by hand, one full forward per candidate, no prefheads engine."""
    out = []
    for ex in exs:
        req, rows = ex.meta["lmeval"], []
        for ctx_s, cont_s, doc_choice in zip(req["contexts"], req["continuations"], req["doc_choices"]):
            n = len(ctx_s) - len(ctx_s.rstrip())
            if n:
                ctx_s, cont_s = ctx_s[:-n], ctx_s[-n:] + cont_s
            ctx = tok.encode(ctx_s)
            cont = tok.encode(ctx_s + cont_s)[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            ll = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
            rows.append((ll, len(cont), len(doc_choice)))
        out.append(rows)
    return out


def test_scores_equal_a_hand_loop_over_a_plain_forward(data):
    model, tok = make_backbone("llama", make_tokenizer())
    exs = _examples(data)
    hand = _hand_scores(model, tok, exs)
    for kw in ({}, {"shared_prefix": False}):
        s = score_lmeval(model, exs, tokenizer=tok, **kw)
        for j, rows in enumerate(hand):
            assert s.logprob_sum[j] == pytest.approx([r[0] for r in rows], abs=1e-3, rel=1e-5)
            assert s.n_tokens[j] == [r[1] for r in rows]
            assert s.norm_chars[j] == [r[2] for r in rows]
        want = {"acc": lambda r: r[0], "acc_norm": lambda r: r[0] / r[2], "mean": lambda r: r[0] / r[1]}
        preds = s.predictions()
        for m, f in want.items():
            scores = [[f(r) for r in rows] for rows in hand]
            assert preds[m] == [max(range(len(x)), key=lambda i: (x[i], -i)) for x in scores]
            assert s.summary()[m] == sum(p == e.label for p, e in zip(preds[m], exs)) / len(exs)
    assert set(s.methods("lm-eval:")) == {"lm-eval:acc", "lm-eval:acc_norm", "lm-eval:mean"}
    exs[0].label = None  # unlabelled examples leave the accuracies
    summ = score_lmeval(model, exs, tokenizer=tok).summary()
    assert summ["n"] == len(exs) - 1 and summ["unlabelled"] == 1
    assert summ["acc"] == sum(p == e.label for p, e in zip(preds["acc"][1:], exs[1:])) / (len(exs) - 1)
    assert s.records()[0]["pred"].keys() == {"acc", "acc_norm", "mean"}


def test_preference_model_and_plain_model_agree(data):
    model, tok = make_backbone("qwen2", make_tokenizer())
    exs = _examples(data)[:3]
    pm = PreferenceModel.from_backbone(model, tok)
    a, b = score_lmeval(pm, exs), score_lmeval(model, exs, tokenizer=tok)
    assert sum(a.logprob_sum, []) == pytest.approx(sum(b.logprob_sum, []))
    candidates = encode_examples(tok, exs)[0]
    assert len(candidates) == sum(len(e.choices) for e in exs)
    assert len({tuple(c.ids[: c.prompt_len]) for c in candidates[:4]}) == 1  # one shared context


def test_long_sequences_keep_their_tail_and_paper_examples_are_refused(data):
    model, tok = make_backbone("llama", make_tokenizer())
    ex = first("arc_easy", data)
    full, _ = encode_examples(tok, [ex])
    limit = min(len(it.ids) for it in full) - 3  # every candidate loses context tokens, none its answer
    items, _ = encode_examples(tok, [ex], max_length=limit)
    for it, f in zip(items, full):
        assert it.ids == f.ids[-limit:] and it.prompt_len == f.prompt_len - it.truncated and it.truncated >= 3
    assert score_lmeval(model, [ex], tokenizer=tok, max_length=limit).truncated == 4
    with pytest.raises(ValueError, match="continuation alone"):
        encode_examples(tok, [ex], max_length=5)
    paper = T.load_examples("arc_easy", data_dir=data, limit=1)[0]
    with pytest.raises(ValueError, match="variant='lm-eval'"):
        score_lmeval(model, [paper], tokenizer=tok)


def test_cli_eval_template_lm_eval_on_every_gpt4all_task_present(data, tmp_path):
    """`prefheads eval --template lm-eval` on each GPT4All-suite task of ../shared/data."""
    from typer.testing import CliRunner

    from prefheads.cli import app

    def has_eval_files(t: str) -> bool:
        files = T.data_files(t, data)
        return all(s in files and all(p.is_file() for p in files[s]) for s in T.get_task(t).eval_splits)

    present = [t for t in T.expand("gpt4all") if has_eval_files(t)]
    assert {"arc_easy", "arc_challenge", "openbookqa", "boolq", "piqa", "winogrande"} <= set(present)
    bb, tok = make_backbone("llama")
    bb.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval", "--base", str(tmp_path / "base"), "--task", ",".join(present),
                                   "--data-dir", str(data), "--template", "lm-eval", "--max-eval", "3",
                                   "--subset", "first", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    pm = PreferenceModel.from_pretrained(str(tmp_path / "base"))
    for t in present:
        block = r["tasks"][t]
        assert block["variant"] == "lm-eval" and block["n"] == 3 and block["lm_eval"]["available"]
        direct = score_lmeval(pm, T.load_examples(t, "eval", data, limit=3, variant="lm-eval")).summary()
        for m in ("acc", "acc_norm", "mean"):
            assert block["methods"][f"lm-eval:{m}"]["metrics"]["accuracy"] == pytest.approx(direct[m])
