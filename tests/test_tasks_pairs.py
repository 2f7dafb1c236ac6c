"""Preference pairs (from labels, SQuAD v2, HH-RLHF, chat-format datasets), bad input and mixes."""

from __future__ import annotations

import gzip
import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from prefheads import tasks as T
from prefheads.tasks import DataError
from prefheads.tasks.adapters import parse_hh
from prefheads.types import Example


@pytest.fixture
def data(shared_data: Path) -> Path:
    """The real dataset copies (conftest: $PREFHEADS_TEST_DATA or ../shared/data; skips if absent)."""
    return shared_data


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# ---------------------------------------------------------------------------- pairs from labels


def test_pairs_from_labels_are_seeded_and_correct(data):
    exs = T.load_examples("arc_easy", data_dir=data, split="test", limit=300)
    a = T.pairs_from_examples(exs, seed=0)
    assert len(a) == 300
    for ex, p in zip(exs, a):
        assert p.chosen == ex.choices[ex.label] and p.rejected in ex.choices and p.chosen != p.rejected
        assert p.prompt == ex.prompt and p.meta["chosen_index"] == ex.label
    assert [p.rejected for p in a] == [p.rejected for p in T.pairs_from_examples(exs, seed=0)]
    assert [p.rejected for p in a] != [p.rejected for p in T.pairs_from_examples(exs, seed=1)]
    # a pair depends on (seed, task, id) only, not on how many examples were loaded
    few = T.load_pairs("arc_easy", split="test", data_dir=data, limit=10, seed=0)
    assert [p.rejected for p in few] == [p.rejected for p in a[:10]]
    # every wrong choice gets drawn: the sampling is uniform over the incorrect ones
    draws = Counter(p.meta["rejected_index"] - (p.meta["rejected_index"] > p.meta["chosen_index"]) for p in a)
    assert set(draws) == {0, 1, 2} and min(draws.values()) > 60


def test_stsb_pairs_use_rounded_scores(data):
    pairs = T.load_pairs("glue/stsb", data_dir=data, limit=200)
    for p in pairs:
        assert p.chosen == str(round(p.meta["score"])) and p.rejected != p.chosen
        assert p.rejected in {"0", "1", "2", "3", "4", "5"}


def test_duplicate_choice_texts_never_become_the_rejected():
    ex = Example(id="x", prompt=[{"role": "user", "content": "q"}], choices=["a", "a", "b"], label=0, task="t")
    assert {T.pairs_from_examples([ex], seed=s)[0].rejected for s in range(20)} == {"b"}
    none = T.pairs_from_examples([Example("y", ex.prompt, ["a", "a"], 0, "t"), Example("z", ex.prompt, ["a"], None)])
    assert len(none) == 0 and none.dropped == 2


def test_training_candidates_never_pair_a_choice_with_its_own_text():
    from prefheads.training.data import from_examples, sample_pairs

    q = [{"role": "user", "content": "q"}]
    c = from_examples([Example("x", q, ["a", "a", "b"], 1, "t"), Example("y", q, ["a", "a"], 0, "t")], "t")
    assert c.ids == ["x"] and c.dropped == 1  # y has no wrong choice distinct from its answer
    (w, losers), = c.groups
    assert c.completions[w] == "a" and [c.completions[r] for r in losers] == ["b"]
    for seed in range(10):
        p = sample_pairs(c.groups, torch.Generator().manual_seed(seed))
        assert all(c.completions[a] != c.completions[b] for a, b in p.tolist())


def test_squad_v2_pairs(tmp_path):
    ctx = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."
    doc = {"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [{"context": ctx, "qas": [
        {"id": "q1", "question": "In what country is Normandy located?", "is_impossible": False,
         "answers": [{"text": "France", "answer_start": 105}]},
        {"id": "q2", "question": "Who gave their name to Normandy in the 1000's and 1100's", "is_impossible": True,
         "answers": [], "plausible_answers": [{"text": "Normans", "answer_start": 4}]},
    ]}]}]}
    write(tmp_path / "squad/dev-v2.0.json", json.dumps(doc))
    exs = T.load_examples("squad_v2", data_dir=tmp_path)
    assert exs[0].prompt[1]["content"] == (f"Title: Normans\nBackground: {ctx}\n"
                                           "Question: In what country is Normandy located?\nAnswer:")
    assert exs[0].choices == ["France", "unanswerable"] and exs[0].label == 0
    pairs = T.load_pairs("squad_v2", split="validation", data_dir=tmp_path)
    assert (pairs[0].chosen, pairs[0].rejected) == ("France", "unanswerable")
    assert pairs[1].chosen == "unanswerable" and pairs[1].rejected in ctx and pairs[1].rejected != "unanswerable"
    assert {"Normans", "Normandy", "France"} <= set(exs[1].choices[1:])


# ---------------------------------------------------------------------------- preference datasets


def test_parse_hh_transcript():
    t = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:  Fine, thanks."
    assert parse_hh(t) == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "How are you?"},
                           {"role": "assistant", "content": "Fine, thanks."}]
    merged = parse_hh("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c")
    assert merged == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b\n\nc"}]
    with pytest.raises(DataError, match="must start with"):
        parse_hh("Assistant: no")


def test_hh_rlhf_real_test_split(data):
    with pytest.warns(UserWarning, match=r"dropped \d+ row"):
        pairs = T.load_pairs("hh_rlhf", split="test", data_dir=data)
    assert len(pairs) + pairs.dropped == 2312 + 2354 + 1137 + 2749 and pairs.skipped == 0
    assert pairs.dropped < 60  # identical replies (36) and two transcripts ending on a Human turn
    for p in pairs:
        assert p.chosen != p.rejected
        roles = [m["role"] for m in p.prompt]
        assert roles[-1] == "user" and roles[0] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))  # alternating turns
    first = pairs[0]
    assert first.meta["source"].endswith("harmless-base/test.jsonl.gz") and first.meta["row"] == 1
    assert "\n\nHuman:" not in first.chosen and "\n\nAssistant:" not in first.prompt[-1]["content"]


def test_hh_rlhf_bundled_slice_matches_the_release(data):
    bundled = T.load_pairs("hh_rlhf", split="test", data_dir="bundled")
    assert len(bundled) + bundled.dropped == 200
    with gzip.open(data / "hh-rlhf/helpful-base/test.jsonl.gz", "rt", encoding="utf-8") as f:
        raw = [json.loads(next(f)) for _ in range(200)]
    assert raw[0]["chosen"].endswith(bundled[0].chosen)
    assert raw[0]["chosen"].startswith("\n\nHuman: " + bundled[0].prompt[0]["content"])


def test_bundled_openbookqa():
    assert (T.bundled_data_dir() / "README.md").exists()
    assert len(T.load_examples("openbookqa", data_dir="bundled")) == 500
    train = T.load_pairs("openbookqa", data_dir="bundled")
    assert len(train) == 1000 and all(p.chosen != p.rejected for p in train)
    with pytest.raises(ValueError, match="no bundled"):
        T.load_examples("glue/rte", data_dir="bundled")


UF_ROW = {"prompt": "Name a colour.", "prompt_id": "p1",
          "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
          "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "No."}],
          "score_chosen": 8.0, "score_rejected": 2.0}


def test_ultrafeedback_takes_the_assistant_replies(tmp_path):
    same = dict(UF_ROW, prompt_id="p2", rejected=UF_ROW["chosen"])
    jsonl(tmp_path / "ultrafeedback/train_prefs.jsonl", [UF_ROW, same])
    with pytest.warns(UserWarning, match="dropped 1"):
        pairs = T.load_pairs("ultrafeedback", data_dir=tmp_path)
    assert len(pairs) == 1 and pairs.dropped == 1
    p = pairs[0]
    assert (p.chosen, p.rejected) == ("Blue.", "No.")  # never message 0, the prompt
    assert p.chosen != p.rejected and p.chosen != UF_ROW["prompt"]
    assert p.prompt == [{"role": "system", "content": T.get_task("ultrafeedback").system},
                        {"role": "user", "content": "Name a colour."}]
    assert p.meta["score_chosen"] == 8.0 and p.id == "train_prefs:p1"


def test_orca_dpo_string_format_with_own_system(tmp_path):
    row = {"system": "You are terse.", "question": "2+2?", "chosen": "4", "rejected": "5"}
    jsonl(tmp_path / "orca_dpo/train_prefs.jsonl", [row, dict(row, system="")])
    a, b = T.load_pairs("orca_dpo", data_dir=tmp_path)
    assert a.prompt == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}]
    assert b.prompt[0]["content"] == T.get_task("orca_dpo").system  # empty system → the task's
    assert (a.chosen, a.rejected) == ("4", "5")


def test_generic_pairs_file(tmp_path):
    f = jsonl(tmp_path / "mine.jsonl", [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}], "chosen": "d", "rejected": "e"},
    ])
    pairs = T.load_pairs("pairs", path=f)
    assert [p.prompt[-1]["content"] for p in pairs] == ["Hi", "c"] and len(pairs[1].prompt) == 3
    assert [p.chosen for p in T.load_pairs(f"pairs:{f}")] == ["Hello!", "d"]


# ---------------------------------------------------------------------------- bad input


def test_malformed_json_names_file_line_field(tmp_path):
    good = json.loads((T.bundled_data_dir() / "openbookqa_test.jsonl").open().readline())
    f = jsonl(tmp_path / "openbookqa/test.jsonl", [good, "{not json", good])
    with pytest.raises(DataError) as e:
        T.load_examples("openbookqa", data_dir=tmp_path)
    assert (e.value.file, e.value.line, e.value.field) == (str(f), 2, "<json>")
    assert str(f) in str(e.value) and ":2:" in str(e.value)
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        exs = T.load_examples("openbookqa", data_dir=tmp_path, skip_bad=True)
    assert len(exs) == 2 and exs.skipped == 1 and "test.jsonl:2" in exs.problems[0]


@pytest.mark.parametrize("mutate,field,msg", [
    (lambda r: r.pop("answerKey"), "answerKey", "missing field"),
    (lambda r: r.update(answerKey="Z"), "answerKey", "unknown label 'Z'"),
    (lambda r: r["question"].update(choices=[]), "question.choices", "empty choice list"),
    (lambda r: r["question"].pop("stem"), "question.stem", "missing field"),
])
def test_bad_arc_rows(tmp_path, mutate, field, msg):
    rows = [json.loads(line) for line in (T.bundled_data_dir() / "openbookqa_test.jsonl").open()][:3]
    mutate(rows[1])
    f = jsonl(tmp_path / "arc/ARC-Easy-Test.jsonl", rows)
    with pytest.raises(DataError, match=msg) as e:
        T.load_examples("arc_easy", data_dir=tmp_path)
    assert (e.value.file, e.value.line, e.value.field) == (str(f), 2, field)
    with pytest.warns(UserWarning):
        assert T.load_examples("arc_easy", data_dir=tmp_path, skip_bad=True).skipped == 1


def test_bad_tsv_rows(tmp_path):
    f = write(tmp_path / "glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
              "1\ta\tb\tmaybe\n2\tonly two\n3\tc\td\tnot_entailment\n")
    with pytest.raises(DataError, match=r"dev.tsv:3: field 'label': unknown label 'maybe'"):
        T.load_examples("glue/rte", data_dir=tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        exs = T.load_examples("glue/rte", data_dir=tmp_path, skip_bad=True)
    assert [e.label for e in exs] == [0, 1] and exs.skipped == 2
    assert any("dev.tsv:4" in p and "<columns>" in p for p in exs.problems) and str(f) in exs.problems[0]


def test_bad_pair_rows(tmp_path):
    jsonl(tmp_path / "ultrafeedback/train_prefs.jsonl", [
        UF_ROW, dict(UF_ROW, chosen=UF_ROW["chosen"][:1]),  # the last message is the user's
        {k: v for k, v in UF_ROW.items() if k != "rejected"}])
    with pytest.raises(DataError, match=r"train_prefs.jsonl:2: field 'chosen\[-1\].role'"):
        T.load_pairs("ultrafeedback", data_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = T.load_pairs("ultrafeedback", data_dir=tmp_path, skip_bad=True)
    assert len(pairs) == 1 and pairs.skipped == 2 and "'rejected'" in pairs.problems[1]


# ---------------------------------------------------------------------------- formats not on disk


def test_mnli_qqp_hellaswag_mmlu_release_formats(tmp_path):
    hdr = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
          "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    for split, lab in (("dev_matched", "neutral"), ("dev_mismatched", "contradiction")):
        write(tmp_path / f"glue/MNLI/{split}.tsv", hdr + f"0\t1\t1n\tfiction\t(x)\t(y)\t(x)\t(y)\tP {split}.\tH.\t{lab}\t{lab}\n")
    mnli = T.load_examples("glue/mnli", data_dir=tmp_path)
    assert [(e.meta["split"], e.label) for e in mnli] == [("validation_matched", 1), ("validation_mismatched", 2)]
    assert mnli[0].prompt[1]["content"].split("\n")[1:3] == ["Premise: P dev_matched.", "Hypothesis: H."]
    write(tmp_path / "glue/QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tA?\tB?\t1\n")
    assert T.load_examples("glue/qqp", data_dir=tmp_path)[0].label == 1
    jsonl(tmp_path / "hellaswag/hellaswag_val.jsonl", [{"ind": 4, "activity_label": "Cooking", "ctx_a": "A man",
          "ctx_b": "cooks", "ctx": "A man cooks", "endings": ["e0", "e1", "e2", "e3"], "label": 2}])
    h = T.load_examples("hellaswag", data_dir=tmp_path)[0]
    assert h.prompt[1]["content"] == 'Continue the following sentence:\n"A man cooks"'
    assert (h.choices, h.label, h.id) == (["e0", "e1", "e2", "e3"], 2, "validation:4")
    write(tmp_path / "mmlu/data/test/astronomy_test.csv", 'What is "Sol"?,a star,a moon,a comet,"a, planet",A\n')
    m = T.load_examples("mmlu", data_dir=tmp_path)[0]
    assert m.choices == ["A. a star", "B. a moon", "C. a comet", "D. a, planet"] and m.label == 0
    assert m.prompt[1]["content"].startswith('Question: What is "Sol"?\nChoices:\nA. a star\n')


# ---------------------------------------------------------------------------- mixes


def test_mix_is_size_aware_and_seeded(data):
    names = ["glue/rte", "glue/wnli", "openbookqa"]  # 2490 / 635 / 4957 train rows
    full = T.mix(names, data_dir=data, seed=0)
    assert full.counts == {"glue/rte": 2490, "glue/wnli": 635, "openbookqa": 4957} and len(full) == 8082
    m = T.mix(names, data_dir=data, seed=0, limit=1000)
    assert m.counts == {"glue/rte": 308, "glue/wnli": 79, "openbookqa": 613} and len(m) == 1000
    assert Counter(p.task for p in m) == m.counts
    assert [p.id for p in m] == [p.id for p in T.mix(names, data_dir=data, seed=0, limit=1000)]
    assert [p.id for p in m] != [p.id for p in T.mix(names, data_dir=data, seed=1, limit=1000)]
    assert len({(p.task, p.id) for p in m}) == 1000  # no repeats while a task has enough rows
    w = T.mix(names, data_dir=data, weights={"glue/rte": 1, "glue/wnli": 1, "openbookqa": 2}, limit=2000)
    assert w.counts == {"glue/rte": 500, "glue/wnli": 500, "openbookqa": 1000}
    with pytest.warns(UserWarning, match="repeated"):
        up = T.mix(["glue/wnli"], data_dir=data, limit=1500)
    assert max(Counter(p.id for p in up).values()) == 3 and len({p.id for p in up}) == 635


def test_mix_group_weights_split_by_member_size():
    from prefheads.tasks.pairs import mix
    from prefheads.types import PreferencePair

    sizes = {"g/a": 300, "g/b": 100, "c": 50}
    pool = {t: [PreferencePair(f"{t}{i}", [{"role": "user", "content": "q"}], "y", "n", t) for i in range(n)]
            for t, n in sizes.items()}
    groups = {"g": ["g/a", "g/b"]}
    with pytest.warns(UserWarning, match="'c' repeated"):
        m = mix(["g", "c"], pool.__getitem__, lambda n: groups.get(n, [n]), weights={"g": 1, "c": 1}, limit=400)
    assert m.counts == {"g/a": 150, "g/b": 50, "c": 200}  # the group's half split 3:1 by size
    with pytest.warns(UserWarning, match="repeated"):
        mix(["c"], pool.__getitem__, lambda n: [n], limit=60)
    with pytest.raises(ValueError, match="not being mixed"):
        mix(["c"], pool.__getitem__, lambda n: [n], weights={"g": 1.0})
    with pytest.raises(ValueError, match="2 weights for 1"):
        mix(["c"], pool.__getitem__, lambda n: [n], weights=[1, 2])


def test_pairs_from_files_of_the_same_name_in_different_folders_keep_distinct_ids(tmp_path):
    """HH-RLHF's four subsets each have a ``test.jsonl.gz``: ids name the folder too."""
    import gzip
    import json as _json

    from prefheads import tasks

    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    for sub in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"):
        (tmp_path / "hh-rlhf" / sub).mkdir(parents=True)
        with gzip.open(tmp_path / "hh-rlhf" / sub / "test.jsonl.gz", "wt") as f:
            f.write((_json.dumps(row) + "\n") * 2)
    ids = [p.id for p in tasks.load_pairs("hh_rlhf", "eval", data_dir=tmp_path)]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert "test:helpful-base/test.jsonl.gz:2" in ids
