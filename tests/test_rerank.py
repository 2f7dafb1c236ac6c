"""Best-of-N reranking: generation settings, exact scores, shared prompt encoding, files and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_backbone, make_tokenizer
from prefheads import PreferenceModel
from prefheads.infer.rerank import (GenerationSettings, generate_candidates, prompt_ids, rank, rerank, rerank_candidates,
                              rerank_file)
from test_evaluation import tiny_pm

PROMPT = "Question: what is the capital of France?"


@pytest.fixture(scope="module")
def pm():
    pm = tiny_pm()
    pm.add_head("a", "swiglu", init_std=0.5)
    pm.add_head("b", "identity", init_std=0.5, activate=False)
    return pm


def test_rerank_scores_equal_pm_score_and_are_ranked(pm):
    got = rerank(pm, PROMPT, n=6, max_new_tokens=10, seed=1)
    assert len(got) == 6
    rewards = [r for _, r in got]
    assert rewards == sorted(rewards, reverse=True)
    assert max(abs(r) for r in rewards) > 1e-2  # rewards of order 1: the 1e-4 check means something
    for text, r in got:
        assert abs(pm.score(PROMPT, text).item() - r) < 1e-4
    other = rerank(pm, PROMPT, n=6, max_new_tokens=10, seed=1, head="b")
    assert sorted(t for t, _ in other) == sorted(t for t, _ in got)  # same samples, other head's order
    for text, r in other:
        assert abs(pm.score(PROMPT, text, head="b").item() - r) < 1e-4


def test_generation_is_seeded_and_settings_are_used(pm):
    a = generate_candidates(pm, PROMPT, 4, max_new_tokens=8, seed=3)
    b = generate_candidates(pm, PROMPT, 4, max_new_tokens=8, seed=3)
    c = generate_candidates(pm, PROMPT, 4, max_new_tokens=8, seed=4)
    assert [g.text for g in a] == [g.text for g in b] != [g.text for g in c]
    assert all(g.n_tokens <= 8 for g in a)
    state = torch.random.get_rng_state()
    generate_candidates(pm, PROMPT, 2, max_new_tokens=4, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    greedy = generate_candidates(pm, PROMPT, 4, max_new_tokens=6, temperature=0)
    assert len(greedy) == 1 and greedy[0].n_tokens == 6
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="n must be"):
        generate_candidates(pm, PROMPT, 0)


def test_unfinished_samples_are_scored_as_a_finished_turn(pm):
    gens = generate_candidates(pm, PROMPT, 8, max_new_tokens=5, seed=0)
    assert all(g.finished or g.n_tokens == 5 for g in gens)
    assert not all(g.finished for g in gens)  # a random tiny model rarely closes its turn
    for item in pm.encode([PROMPT] * 8, [g.text for g in gens]):
        assert item.ids[-1] == pm.chat.reward_token_id


def test_prompt_is_encoded_once_for_all_candidates(pm):
    prompt = "The quick brown fox jumps over the lazy dog. " * 6
    cands = [g.text for g in generate_candidates(pm, prompt, 8, max_new_tokens=6, seed=2)]
    seen: list[int] = []
    hook = pm.backbone.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    try:
        rerank_candidates(pm, prompt, cands)
    finally:
        hook.remove()
    items = pm.encode([prompt] * 8, cands)
    shared = items[0].prompt_len
    assert shared >= len(prompt_ids(pm, prompt)) - 1
    longest = max(len(it.ids) - shared for it in items)
    # the prompt runs once, then only the suffixes (padded to the longest), not 8 full sequences
    assert sum(seen) == shared + 8 * longest < sum(len(it.ids) for it in items) / 2


def test_rerank_candidates_and_rank_ties_keep_order(pm):
    got = rerank_candidates(pm, PROMPT, ["Paris", "London", "Rome"])
    want = pm.score(PROMPT, ["Paris", "London", "Rome"]).tolist()
    assert [r for _, r in got] == sorted(want, reverse=True)
    assert rank(["x", "y", "z"], [1.0, 2.0, 1.0]) == [(1, "y", 2.0), (0, "x", 1.0), (2, "z", 1.0)]
    with pytest.raises(ValueError, match="no candidates"):
        rerank_candidates(pm, PROMPT, [])
    with pytest.raises(KeyError, match="nope"):
        rerank(pm, PROMPT, n=2, head="nope")


def test_plain_layout_generations_score_exactly():
    bb, tok = make_backbone("gpt2", make_tokenizer(chat=False))
    pm = PreferenceModel.from_backbone(bb, tok)
    pm.add_head("a", "bert", init_std=0.5)
    assert pm.chat.mode == "plain"
    for text, r in rerank(pm, "hello world", n=3, max_new_tokens=6):
        assert abs(pm.score("hello world", text).item() - r) < 1e-4


def test_rerank_file(pm, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": PROMPT, "candidates": ["Paris", "Rome"], "id": 7}) + "\n\n"
                   + json.dumps({"prompt": [{"role": "user", "content": "hi"}], "candidates": ["hello"]}) + "\n")
    out = tmp_path / "out.jsonl"
    with open(out, "w") as f:
        assert rerank_file(pm, src, f) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["id"] == 7 and rows[0]["head"] == "a" and [x["rank"] for x in rows[0]["ranked"]] == [1, 2]
    assert {x["candidate"] for x in rows[0]["ranked"]} == {"Paris", "Rome"}
    assert abs(rows[1]["ranked"][0]["reward"] - pm.score([{"role": "user", "content": "hi"}], "hello").item()) < 1e-4
    src.write_text('{"prompt": "x", "candidates": []}\n')
    with pytest.raises(ValueError, match=r"in.jsonl:1: expected"):
        with open(out, "w") as f:
            rerank_file(pm, src, f)
    for prompt, msg in [(5, "a prompt is a string or a list of message dicts"), ([], "empty message list")]:
        src.write_text(json.dumps({"prompt": prompt, "candidates": ["a", "b"]}) + "\n")
        with pytest.raises(ValueError, match=f"in.jsonl:1: .*{msg}"):
            with open(out, "w") as f:
                rerank_file(pm, src, f)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank_cli")
    pm = tiny_pm()
    pm.backbone.save_pretrained(root / "base")
    pm.tokenizer.save_pretrained(root / "base")
    pm = PreferenceModel.from_pretrained(str(root / "base"))
    pm.add_head("a", "swiglu", init_std=0.5)
    pm.save_heads(root / "heads")
    return root, pm


def test_cli_rerank_prompt_and_candidates(saved, tmp_path):
    from prefheads.cli import app

    root, pm = saved
    common = ["rerank", "--heads", str(root / "heads"), "--base", str(root / "base")]
    runner = CliRunner()
    res = runner.invoke(app, common + ["--prompt", PROMPT, "-n", "3", "--max-new-tokens", "6", "--seed", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["ranked"]) == 3 and data["head"] == "a"
    for item in data["ranked"]:
        assert abs(pm.score(PROMPT, item["candidate"]).item() - item["reward"]) < 1e-4
    res = runner.invoke(app, common + ["--prompt", PROMPT, "-n", "2", "--max-new-tokens", "4"])
    assert res.exit_code == 0 and "2 samples ranked by head 'a'" in res.output and "1. " in res.output
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"prompt": PROMPT, "candidates": ["Paris", "Rome", "Oslo"]}) + "\n")
    res = runner.invoke(app, common + ["--candidates", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "o.jsonl").read_text())["ranked"]) == 3
    # a bad row leaves the earlier ranking untouched and no partial file; the input is never the output
    before = (tmp_path / "o.jsonl").read_bytes()
    src.write_text(json.dumps({"prompt": PROMPT, "candidates": ["Paris"]}) + "\n"
                   + json.dumps({"prompt": 5, "candidates": ["Rome"]}) + "\n")
    res = runner.invoke(app, common + ["--candidates", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0 and "c.jsonl:2" in str(res.exception or res.output)
    assert (tmp_path / "o.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "o.jsonl"]
    res = runner.invoke(app, common + ["--candidates", str(src), "--out", str(src)])
    assert res.exit_code != 0 and "is the --candidates file" in res.output and "Rome" in src.read_text()
    res = runner.invoke(app, common)
    assert res.exit_code != 0 and "exactly one of --prompt" in res.output
    res = runner.invoke(app, common + ["--prompt", "x", "--top-p", "0"])
    assert res.exit_code != 0 and "top_p" in res.output
