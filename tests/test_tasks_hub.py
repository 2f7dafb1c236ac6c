"""The hub path, with ``datasets.load_dataset`` replaced by a fake serving hub-shaped rows.

Nothing is downloaded: this checks that each task maps the hub's row layout (field names, int /
bool / letter labels, hidden test labels) the same way as the release files.
"""

from __future__ import annotations

import sys
import types

import pytest

from prefheads import tasks as T

Q = {"role": "user", "content": "Hi?"}
ROWS = {
    "nyu-mll/glue/rte": [{"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0},
                         {"sentence1": "C.", "sentence2": "D.", "label": -1, "idx": 1}],
    "nyu-mll/glue/mnli": [{"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0}],
    "nyu-mll/glue/stsb": [{"sentence1": "A.", "sentence2": "B.", "label": 3.8, "idx": 0}],
    "allenai/ai2_arc/ARC-Easy": [{"id": "q1", "question": "Why?", "answerKey": "2",
                                  "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}}],
    "allenai/openbookqa/main": [{"id": "7-1", "question_stem": "What?", "answerKey": "A",
                                 "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}}],
    "ehovy/race/high": [{"example_id": "high1.txt", "article": "Art.", "question": "Q1?", "answer": "D",
                         "options": ["o1", "o2", "o3", "o4"]},
                        {"example_id": "high1.txt", "article": "Art.", "question": "Q2?", "answer": "A",
                         "options": ["p1", "p2", "p3", "p4"]}],
    "allenai/winogrande/winogrande_xl": [{"sentence": "Tom hit Bob so _ cried.", "option1": "Tom",
                                          "option2": "Bob", "answer": "2"},
                                         {"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": ""}],
    "google/boolq": [{"question": "is it", "answer": True, "passage": "It is."}],
    "ybisk/piqa": [{"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 0}],
    "Rowan/hellaswag": [{"ind": 3, "ctx": "A man", "endings": ["a", "b", "c", "d"], "label": "3",
                         "activity_label": "x"}],
    "cais/mmlu/all": [{"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}],
    "rajpurkar/squad_v2": [{"id": "s1", "title": "T", "context": "Paris is in France.", "question": "Where?",
                            "answers": {"text": [], "answer_start": []}}],
    "Anthropic/hh-rlhf": [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.",
                           "rejected": "\n\nHuman: Hi?\n\nAssistant: Go."}],
    "HuggingFaceH4/ultrafeedback_binarized": [{"prompt": "Hi?", "prompt_id": "u1",
                                               "chosen": [Q, {"role": "assistant", "content": "Hello."}],
                                               "rejected": [Q, {"role": "assistant", "content": "Go."}]}],
}


@pytest.fixture
def hub(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split, revision, kw))
        key = f"{path}/{name}" if name else path
        return list(ROWS[key])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("PREFHEADS_DATA", raising=False)
    return calls


def test_glue_from_hub(hub):
    rte = T.load_examples("glue/rte")
    assert [e.label for e in rte] == [1, None] and rte[0].id == "validation:0"  # the same id as the TSV's
    assert rte[0].meta["source"] == "hub:nyu-mll/glue/rte:validation"
    assert hub[0] == ("nyu-mll/glue", "rte", "validation", "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c", {})
    mnli = T.load_examples("glue/mnli")
    assert [e.meta["split"] for e in mnli] == ["validation_matched", "validation_mismatched"]
    assert mnli[0].label == 2 and "Premise: P.\nHypothesis: H." in mnli[0].prompt[1]["content"]
    stsb = T.load_examples("glue/stsb")[0]
    assert (stsb.label, stsb.meta["score"]) == (4, 3.8)
    assert T.load_examples("glue/rte", limit=1) and hub[-1][2] == "validation[:1]"


def test_gpt4all_race_mmlu_from_hub(hub):
    arc = T.load_examples("arc_easy")[0]
    assert arc.choices == ["1. x", "2. y", "3. z"] and arc.label == 1
    obqa = T.load_examples("openbookqa")[0]
    assert obqa.prompt[1]["content"] == "Question: What?\nChoices:\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    race = T.load_examples("race/high")
    assert [e.label for e in race] == [3, 0] and race[0].id != race[1].id
    wg = T.load_examples("winogrande")
    assert wg[0].choices == ["Tom cried.", "Bob cried."] and [e.label for e in wg] == [1, None]
    assert T.load_examples("boolq")[0].label == 1
    assert T.load_examples("piqa")[0].choices == ["twist", "pull"]
    assert T.load_examples("hellaswag")[0].label == 3
    assert T.load_examples("mmlu")[0].choices[1] == "B. 4" and T.load_examples("mmlu")[0].label == 1
    sq = T.load_examples("squad_v2")[0]
    assert sq.choices[0] == "unanswerable" and {"Paris", "France"} <= set(sq.choices)


def test_hub_sources_are_pinned_to_commits():
    import re

    unpinned = []
    for name in T.list_tasks():
        hub = T.get_task(name).hub
        if hub is None:
            continue
        if hub.revision is None:
            unpinned.append(hub.id)
        else:
            assert re.fullmatch(r"[0-9a-f]{40}", hub.revision), (name, hub.revision)
    # no public record of a commit of this one could be found to pin; it reads the default branch
    assert unpinned == ["HuggingFaceH4/orca_dpo_pairs"]


def test_pairs_from_hub(hub):
    hh = T.load_pairs("hh_rlhf", split="test")[0]
    assert (hh.prompt, hh.chosen, hh.rejected) == ([Q], "Hello.", "Go.")
    uf = T.load_pairs("ultrafeedback")[0]
    assert (uf.chosen, uf.rejected) == ("Hello.", "Go.") and uf.prompt[-1] == Q
    with pytest.raises(ValueError, match="no hub source"):
        T.load_pairs("pairs")
