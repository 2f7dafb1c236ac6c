"""Task registry, templates and loaders against the real dataset copies in shared/data.

The expected prompts below are written out by hand from PAPER.md section 6 ("/" = newline).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from prefheads import tasks as T
from prefheads.tasks.catalog import task_from_dict
from prefheads.tasks.spec import DEFS_DIR, SpecError, system_prompts

SYS_A = ("Below is an instruction that describes a task. Write a response that appropriately "
         "completes the request using the provided answer options.")
SYS_B = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
SYS_C = ("Below is a question, paired with multiple choices. Respond with the choice that correctly "
         "answers the question.")
SYS_D = ("Below is a question, paired with a background context and multiple choices. Respond with the "
         "choice that correctly answers the question.")

ALL_TASKS = [
    "arc_challenge", "arc_easy", "boolq", "glue/cola", "glue/mnli", "glue/mrpc", "glue/qnli", "glue/qqp",
    "glue/rte", "glue/sst2", "glue/stsb", "glue/wnli", "hellaswag", "hh_rlhf", "mmlu", "openbookqa",
    "orca_dpo", "pairs", "piqa", "race/high", "race/middle", "squad_v2", "ultrafeedback", "winogrande",
]


@pytest.fixture
def data(shared_data: Path) -> Path:
    """The real dataset copies (conftest: $PREFHEADS_TEST_DATA or ../shared/data; skips if absent)."""
    return shared_data


# ---------------------------------------------------------------------------- registry


def test_every_task_yaml_loads_and_validates():
    assert T.list_tasks() == sorted(ALL_TASKS)
    yamls = {p.stem for p in DEFS_DIR.glob("*.yaml") if not p.name.startswith("_")}
    assert yamls == {n.replace("/", "_") for n in ALL_TASKS}
    for name in T.list_tasks():
        spec = T.get_task(name)
        assert spec.variant == "paper" and spec.name == name
        assert set(spec.metrics) <= {"mcc", "accuracy", "f1", "pearson", "spearman"}
        for v in ("paper_fixed", "reference"):
            assert T.get_task(name, variant=v).variant == v
        assert len(spec.template_hash()) == 16


def test_system_prompts_are_the_papers():
    p = system_prompts()
    assert (p["A"], p["B"], p["C"], p["D"]) == (SYS_A, SYS_B, SYS_C, SYS_D)
    by_sys = {n: T.get_task(n).system_id for n in T.list_tasks()}
    assert {n for n, s in by_sys.items() if s == "A"} >= {"boolq", "glue/cola", "glue/rte", "glue/wnli"}
    assert {n for n, s in by_sys.items() if s == "B"} >= {"hellaswag", "winogrande", "piqa"}
    assert {n for n, s in by_sys.items() if s == "C"} >= {"openbookqa", "arc_easy", "arc_challenge"}
    assert {n for n, s in by_sys.items() if s == "D"} == {"race/middle", "race/high"}


def test_group_expansion():
    glue = ["glue/cola", "glue/sst2", "glue/mrpc", "glue/qqp", "glue/stsb", "glue/mnli", "glue/qnli",
            "glue/rte", "glue/wnli"]
    assert T.expand("glue") == glue
    assert T.expand("glue", train=True) == glue[:-1]  # the paper trains without WNLI
    assert T.expand("gpt4all") == ["hellaswag", "openbookqa", "winogrande", "arc_easy", "arc_challenge",
                                   "boolq", "piqa"]
    assert T.expand("race") == ["race/middle", "race/high"]
    assert T.expand("glue/rte") == ["glue/rte"]
    assert T.list_groups() == ["glue", "gpt4all", "race"]
    with pytest.raises(KeyError, match="did you mean"):
        T.expand("glue/rtee")


def test_eval_and_train_splits_follow_the_paper():
    assert T.get_task("glue/mnli").eval_splits == ("validation_matched", "validation_mismatched")
    for n in ("arc_easy", "arc_challenge", "openbookqa", "race/middle", "race/high"):
        assert T.get_task(n).eval_splits == ("test",)
    for n in ("hellaswag", "winogrande", "boolq", "piqa", "glue/rte", "glue/cola"):
        assert T.get_task(n).eval_splits == ("validation",)
    assert T.get_task("ultrafeedback").train_split == "train_prefs"
    assert T.get_task("glue/mrpc").positive_label == 1


def _task(**over):
    base = {"name": "t", "adapter": "fields", "hub": {"id": "x/y"}, "local": {"reader": "tsv", "files":
            {"train": "a.tsv", "validation": "b.tsv"}, "fields": {"s": "s"}}, "system": "A",
            "user": ["S: {s}", "Answer:"], "choices": ["no", "yes"]}
    base.update(over)
    return task_from_dict(base, "t.yaml")


def test_spec_validation_errors_are_clear():
    assert _task().user_template() == "S: {s}\nAnswer:"
    for over, msg in [
        ({"colour": 1}, "unknown key.*colour"),
        ({"metrics": ["bleu"]}, "unknown metric"),
        ({"user": ["S: {nope}"]}, r"template field\(s\) \['nope'\]"),
        ({"system": "Z"}, "unknown system prompt id 'Z'"),
        ({"choice_template": "{text}"}, "exactly one of 'choices'"),
        ({"adapter": "nope"}, "unknown adapter"),
        ({"eval_splits": ["test"]}, r"no entry for split\(s\) \['test'\]"),
        ({"variants": {"x": {"colour": 1}}}, "variants.x"),
    ]:
        with pytest.raises(SpecError, match=msg) as e:
            _task(**over)
        assert "t.yaml" in str(e.value)
    with pytest.raises(SpecError, match="unknown template variant"):
        _task().with_variant("shiny")


# ---------------------------------------------------------------------------- exact templates


def first(name: str, data: Path, **kw):
    exs = T.load_examples(name, data_dir=data, limit=1, **kw)
    assert len(exs) == 1
    return exs[0]


def check(ex, system: str, user: str, choices: list[str], label: int):
    assert ex.prompt == [{"role": "system", "content": system}, {"role": "user", "content": user}]
    assert ex.choices == choices
    assert ex.label == label


def test_template_rte(data):
    check(first("glue/rte", data), SYS_A,
          'Given the following sentences, answer the question with "yes" or "no".\n'
          "Sentence 1: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
          "according to the Christopher Reeve Foundation.\n"
          "Sentence 2: Christopher Reeve had an accident.\n"
          "Question: Do both sentences mean the same thing?\n"
          "Answer:", ["yes", "no"], 1)


def test_template_sst2(data):
    check(first("glue/sst2", data), SYS_A,
          'Given the following sentence, answer the question with "positive" or "negative".\n'
          "Sentence: it 's a charming and often affecting journey . \n"
          "Question: Is this sentence positive or negative?\n"
          "Answer:", ["negative", "positive"], 1)


def test_template_cola(data):
    check(first("glue/cola", data), SYS_A,
          'Given the following sentence, answer the question with "yes" or "no".\n'
          "Sentence: The sailors rode the breeze clear of the rocks.\n"
          "Question: Does this sentence make sense?\n"
          "Answer:", ["no", "yes"], 1)


def test_template_mrpc_stsb_qnli_wnli(data):
    check(first("glue/mrpc", data), SYS_A,
          'Given the following sentences, answer the question with "yes" or "no".\n'
          "Sentence 1: He said the foodservice pie business doesn't fit the company's long-term growth strategy.\n"
          'Sentence 2: "The foodservice pie business does not fit our long-term growth strategy.\n'
          "Question: Do both sentences mean the same thing?\n"
          "Answer:", ["no", "yes"], 1)
    ex = first("glue/stsb", data)
    check(ex, SYS_A,
          "Given the following sentences, answer the question with a number between 0 and 5.\n"
          "Sentence 1: A man with a hard hat is dancing.\n"
          "Sentence 2: A man wearing a hard hat is dancing.\n"
          "Question: On a scale of 0 to 5 how similar are Sentence 1 and Sentence 2?\n"
          "Answer:", ["0", "1", "2", "3", "4", "5"], 5)
    assert ex.meta["score"] == 5.0
    check(first("glue/qnli", data), SYS_A,
          'Given the following sentences, answer the question with "yes" or "no".\n'
          "Sentence 1: What came into force after the new constitution was herald?\n"
          "Sentence 2: As of that day, the new constitution heralding the Second Republic came into force.\n"
          "Question: Does Sentence 2 correctly answer Sentence 1?\n"
          "Answer:", ["yes", "no"], 0)
    wnli = ('Given the following sentences, answer the question with "yes" or "no".\n'
            "Sentence 1: The drain is clogged with hair. It has to be cleaned.\n"
            "Sentence 2: The hair has to be cleaned.\n"
            "Question: Based on the information in Sentence 1, can we {} that Sentence 2 is true?\n"
            "Answer:")
    check(first("glue/wnli", data), SYS_A, wnli.format("concluded"), ["no", "yes"], 0)
    check(first("glue/wnli", data, variant="paper_fixed"), SYS_A, wnli.format("conclude"), ["no", "yes"], 0)


def test_template_arc_easy(data):
    check(first("arc_easy", data), SYS_C,
          "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\n"
          "Choices:\n"
          "A. Sunlight is the source of energy for nearly all ecosystems.\n"
          "B. Most ecosystems are found on land instead of in water.\n"
          "C. Carbon dioxide is more available than other gases.\n"
          "D. The producers in all ecosystems are plants.\n"
          "Answer:",
          ["A. Sunlight is the source of energy for nearly all ecosystems.",
           "B. Most ecosystems are found on land instead of in water.",
           "C. Carbon dioxide is more available than other gases.",
           "D. The producers in all ecosystems are plants."], 0)


def test_template_openbookqa(data):
    choices = ["A. make more phone calls", "B. quit eating lunch out", "C. buy less with monopoly money",
               "D. have lunch with friends"]
    user = ("Question: A person wants to start saving money so that they can afford a nice vacation at the end "
            "of the year. After looking over their budget and expenses, they decide the best way to save money is to\n"
            "Choices:\n" + "\n".join(choices) + "\nAnswer:")
    check(first("openbookqa", data), SYS_C, user, choices, 1)
    check(first("openbookqa", "bundled"), SYS_C, user, choices, 1)  # the bundled slice: same rows
    ref = first("openbookqa", data, variant="reference")  # the reference code's blank lines
    assert ref.prompt[1]["content"] == user.replace("\nChoices:", "\n\nChoices:").replace("\nAnswer:", "\n\nAnswer:")


def test_template_boolq(data):
    passage = json.loads((data / "boolq/dev.jsonl").open().readline())["passage"]
    ex = first("boolq", data)
    check(ex, SYS_A,
          'Given the following sentences, answer the question with "yes" or "no".\n'
          f"Background: {passage}\n"
          "Question: does ethanol take more energy make that produces\n"
          "Answer:", ["no", "yes"], 0)
    assert passage.startswith("All biomass goes through at least some of these steps")


def test_template_piqa(data):
    check(first("piqa", data), SYS_B,
          'Write a solution to the following sentence:\n"How do I ready a guinea pig cage for it\'s new occupants?"',
          ["Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
           "you will also need to supply it with a water bottle and a food dish.",
           "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
           "you will also need to supply it with a water bottle and a food dish."], 0)


def test_template_winogrande(data):
    check(first("winogrande", data), SYS_B,
          'Continue the following sentence:\n"Sarah was a much better surgeon than Maria so"',
          ["Sarah always got the easier cases.", "Maria always got the easier cases."], 1)


def test_template_race(data):
    article = json.loads((data / "race/RACE/test/middle/1.txt").read_text())["article"]
    choices = ["A. take care of the whole group", "B. make sure that everybody finishes homework",
               "C. make sure that nobody chats in class", "D. collect all the homework and hand it in to teachers"]
    ex = first("race/middle", data)
    check(ex, SYS_D,
          f"Background: {article}\n"
          "Question: A discipline leader is supposed to  _  .\n"
          "Choices:\n" + "\n".join(choices) + "\nAnswer:", choices, 2)
    assert article.startswith("Take a class at Dulangkou School")
    assert ex.meta["source"].endswith("race/RACE/test/middle/1.txt") and ex.meta["row"] == 1


def test_mnli_variants_keep_the_papers_slips():
    paper = T.get_task("glue/mnli").user_template()
    assert "hypothesis statment" in paper and "neurtral" in paper and "premise statement" in paper
    fixed = T.get_task("glue/mnli", "paper_fixed").user_template()
    assert "hypothesis statement" in fixed and "are neutral." in fixed and "statment" not in fixed
    assert T.get_task("glue/mnli").choices == ("True", "Neither", "False")
    assert T.get_task("glue/mnli", "reference").separator == "\n\n"


# ---------------------------------------------------------------------------- counts and labels

EVAL_ROWS = [  # SOURCES.md
    ("glue/cola", 1043), ("glue/sst2", 872), ("glue/mrpc", 408), ("glue/stsb", 1500), ("glue/qnli", 5463),
    ("glue/rte", 277), ("glue/wnli", 71), ("arc_easy", 2376), ("arc_challenge", 1172), ("openbookqa", 500),
    ("boolq", 3270), ("piqa", 1838), ("winogrande", 1267), ("race/middle", 1436), ("race/high", 3498),
]


@pytest.mark.parametrize("name,n", EVAL_ROWS)
def test_eval_row_counts_match_sources(data, name, n):
    exs = T.load_examples(name, data_dir=data)
    assert len(exs) == n and exs.skipped == 0
    assert all(e.label is not None and 0 <= e.label < len(e.choices) for e in exs)
    assert len({e.id for e in exs}) == n  # ids are unique (pair sampling is seeded by id)


@pytest.mark.parametrize("name,split,n", [
    ("glue/rte", "train", 2490), ("glue/cola", "train", 8551), ("glue/mrpc", "train", 3668),
    ("glue/stsb", "train", 5749), ("glue/wnli", "train", 635), ("arc_easy", "train", 2251),
    ("arc_challenge", "validation", 299), ("openbookqa", "validation", 500), ("openbookqa", "train", 4957),
])
def test_other_split_counts(data, name, split, n):
    assert len(T.load_examples(name, split=split, data_dir=data)) == n


@pytest.mark.parametrize("name,counts", [
    ("glue/rte", {0: 146, 1: 131}),      # entailment → "yes" (choice 0)
    ("glue/cola", {1: 721, 0: 322}),     # acceptable → "yes" (choice 1)
    ("glue/sst2", {1: 444, 0: 428}),
    ("glue/mrpc", {1: 279, 0: 129}),
    ("glue/qnli", {0: 2702, 1: 2761}),
    ("glue/wnli", {0: 40, 1: 31}),
    ("boolq", {1: 2033, 0: 1237}),       # true → "yes" (choice 1)
    ("piqa", {1: 928, 0: 910}),
    ("winogrande", {1: 639, 0: 628}),    # answer "2" → option2 (choice 1)
])
def test_label_mapping(data, name, counts):
    assert Counter(e.label for e in T.load_examples(name, data_dir=data)) == counts


def test_choice_labels_point_at_the_answer(data):
    for e in T.load_examples("arc_challenge", data_dir=data):  # 3- and 5-choice and "1".."4" keys too
        raw = e.choices[e.label].split(". ", 1)[0]
        assert raw in "ABCDE1234" and e.prompt[1]["content"].count("\n") >= len(e.choices) + 2
    five = [e for e in T.load_examples("arc_easy", data_dir=data) if len(e.choices) == 5]
    assert five and all(e.choices[-1].startswith("E. ") for e in five)


def test_stsb_scores(data):
    exs = T.load_examples("glue/stsb", data_dir=data)
    scores = [e.meta["score"] for e in exs]
    assert round(sum(scores) / len(scores), 3) == 2.364
    assert all(e.label == round(e.meta["score"]) for e in exs)
    assert {e.label for e in exs} == set(range(6))


def test_meta_names_source_and_row(data):
    e = T.load_examples("glue/rte", data_dir=data, limit=3)[2]
    assert e.meta == {"source": str(data / "glue/RTE/dev.tsv"), "row": 4, "split": "validation"}
    assert e.task == "glue/rte" and e.id == "validation:2"
    assert T.load_examples("glue/cola", data_dir=data, limit=1)[0].meta["row"] == 1  # no header


def test_env_var_and_limits(data, monkeypatch):
    monkeypatch.setenv("PREFHEADS_DATA", str(data))
    assert len(T.load_examples("glue/rte", limit=5)) == 5
    a = T.load_examples("glue/rte", limit=5, shuffle=True, seed=1)
    assert [e.id for e in a] == [e.id for e in T.load_examples("glue/rte", limit=5, shuffle=True, seed=1)]
    assert [e.id for e in a] != [e.id for e in T.load_examples("glue/rte", limit=5)]
    with pytest.raises(FileNotFoundError, match="PREFHEADS_DATA"):
        T.load_examples("hellaswag")  # not among the copies
    with pytest.raises(ValueError, match="load_pairs"):
        T.load_examples("hh_rlhf")


def test_render(data):
    ex = T.load_examples("glue/rte", data_dir=data, limit=1)[0]
    text = T.render(ex)
    assert text.startswith("# glue/rte  validation:0  (") and "dev.tsv:2)" in text
    assert "<|im_start|>user\nGiven the following sentences" in text
    assert text.endswith("<|im_start|>assistant\n[ ] yes\n[x] no\n")

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            return "|".join(m["role"] for m in msgs) + ("|gen\n" if add_generation_prompt else "")

    assert "system|user|gen\n[ ] yes" in T.render(ex, tokenizer=Tok())
    pair = T.load_pairs("glue/rte", data_dir=data, limit=1)[0]
    assert "[chosen]   " in T.render(pair) and "[rejected] " in T.render(pair)


def test_bad_rows_of_rarer_layouts_are_named_errors_that_skip_bad_can_skip(tmp_path):
    """A non-finite STS-B score and a RACE file that is not a JSON object are named, skippable
    rows (not bare ValueError / TypeError); STS-B's hub test label -1.0 means unlabelled."""
    from prefheads.tasks import DataError

    sts = tmp_path / "glue" / "STS-B"
    sts.mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "{}\tg\tf\ty\to\ts\ts\ta\tb\t{}\n"
    for bad in ("nan", "inf"):
        (sts / "dev.tsv").write_text(head + row.format(0, "2.5") + row.format(1, bad))
        with pytest.raises(DataError, match=rf"dev.tsv:3: field 'score': score '{bad}' is not a finite number"):
            T.load_examples("glue/stsb", "eval", str(tmp_path))
        with pytest.warns(UserWarning, match="skipped 1 bad row"):
            assert [e.label for e in T.load_examples("glue/stsb", "eval", str(tmp_path), skip_bad=True)] == [2]
    from prefheads.tasks.adapters import Record
    from prefheads.tasks.loaders import _resolve_label

    spec = T.get_task("glue/stsb")
    for hidden in (-1, -1.0, None, ""):  # how hub test splits hide a label (STS-B's scores: -1.0)
        assert _resolve_label(spec, spec.local, Record(fields={}, label=hidden), 6) == (None, {})
    race = tmp_path / "race" / "RACE" / "test" / "middle"
    race.mkdir(parents=True)
    (race / "1.txt").write_text("[1, 2]")
    (race / "2.txt").write_text('{"id": "2.txt", "article": "a", "questions": ["q?"], "options": [["x", "y", "z", "w"]], '
                                '"answers": ["A"]}')
    with pytest.raises(DataError, match=r"1.txt:1: field '<json>': expected a JSON object, got list"):
        T.load_examples("race/middle", "eval", str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        assert len(T.load_examples("race/middle", "eval", str(tmp_path), skip_bad=True)) == 1


def test_limit_zero_reads_nothing_and_one_file_is_read_once(data, tmp_path):
    assert len(T.load_examples("glue/rte", "eval", data, limit=0)) == 0
    assert len(T.load_examples("glue/rte", "eval", data, limit=0, shuffle=True)) == 0
    one = tmp_path / "mnli.tsv"
    one.write_text("sentence1\tsentence2\tgold_label\n" + "".join(f"p{i}\th{i}\tneutral\n" for i in range(3)))
    got = T.load_examples("glue/mnli", "eval", path=str(one))
    assert len(got) == 3 and len({e.id for e in got}) == 3  # not once per eval split


def test_a_missing_mmlu_folder_names_the_data_dir_setting(tmp_path):
    from prefheads.tasks.readers import read_mmlu_csv

    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nope \(point data_dir"):
        list(read_mmlu_csv(tmp_path / "nope"))
