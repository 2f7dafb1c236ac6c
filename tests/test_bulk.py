"""Bulk scoring: exact rewards in input order, streaming windows, kill -9 + resume, two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import make_backbone, save_to_hub_cache
from prefheads import PreferenceModel
from prefheads.infer import bulk
from prefheads.infer.bulk import BulkOutputError, read_rows, score_file, score_records
from prefheads.tasks.errors import DataError

WORDS = "the quick brown fox jumps over lazy dog hello world yes no".split()


def rows(n: int, seed: int = 0) -> list[dict]:
    """Rows of both shapes, prompts and replies of varied lengths, some with ids."""
    g = torch.Generator().manual_seed(seed)

    def text(k: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))

    out = []
    for i in range(n):
        prompt = "Question: " + text(2 + i % 7)
        if i % 3 == 0:
            out.append({"id": f"r{i}", "prompt": prompt, "chosen": text(1 + i % 5), "rejected": text(3)})
        else:
            row = {"prompt": [{"role": "user", "content": prompt}], "candidates": [text(1 + (i + j) % 6) for j in range(1 + i % 4)]}
            if i % 2:
                row["id"] = i * 10
            out.append(row)
    return out


def write_jsonl(path, items) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pm(two_head_pm):
    return two_head_pm


def expected(pm, row: dict, index: int) -> dict:
    cands = row.get("candidates") or [row["chosen"], row["rejected"]]
    got = pm.score_all_heads(row["prompt"], cands, shared_prefix=False)
    return {"id": row.get("id", index), "rewards": {h: v.tolist() for h, v in got.items()}, "pair": "chosen" in row}


def assert_matches(pm, inputs: list[dict], outputs: list[dict], tol: float = 1e-4) -> None:
    assert len(outputs) == len(inputs)
    for i, (row, out) in enumerate(zip(inputs, outputs)):
        want = expected(pm, row, i)
        assert out["id"] == want["id"]
        for h, v in want["rewards"].items():
            got = [out["rewards"][h]["chosen"], out["rewards"][h]["rejected"]] if want["pair"] else out["rewards"][h]
            assert torch.allclose(torch.tensor(got), torch.tensor(v), atol=tol), (i, h)


def test_every_row_scored_by_every_head_in_input_order(pm, tmp_path, monkeypatch):
    inputs = rows(23)
    write_jsonl(tmp_path / "in.jsonl", inputs)
    windows = []
    real = bulk.score_window
    monkeypatch.setattr(bulk, "score_window", lambda pm_, w, *a: windows.append(len(w)) or real(pm_, w, *a))
    res = score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_rows=5, progress=False)
    assert (res.rows, res.resumed) == (23, 0)
    assert windows == [5, 5, 5, 5, 3]  # read and scored a window at a time
    assert_matches(pm, inputs, read_jsonl(tmp_path / "out.jsonl"))


def test_rows_are_read_lazily_and_bad_rows_are_named(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt": "q", "candidates": ["a"]}\n\n{not json\n')
    it = read_rows(tmp_path / "in.jsonl")
    assert next(it).candidates == ["a"]  # the broken line is not read yet
    with pytest.raises(DataError, match=r"in.jsonl:3: invalid JSON"):
        next(it)
    for bad, msg in [({"candidates": ["a"]}, "no prompt"), ({"prompt": "q", "candidates": []}, "candidates"),
                     ({"prompt": "q", "chosen": "a"}, "rejected"), ({"prompt": "q"}, "chosen"), ([1], "JSON object")]:
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=msg):
            list(read_rows(tmp_path / "bad.jsonl"))


def test_a_row_the_model_cannot_score_stops_the_run_naming_it(pm, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q", "candidates": ["a"]},
                                        {"id": "x7", "prompt": [{"role": "assistant", "content": "q"}], "candidates": ["a"]}])
    with pytest.raises(DataError, match=r"in.jsonl:2: field 'prompt':.*user turn"):
        score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()  # every row is checked before the output is opened
    for row, msg in [({"prompt": 5, "candidates": ["a"]}, "field 'prompt': a prompt is a string"),
                     ({"prompt": "q", "candidates": ["a", "  "]}, "field 'candidates': candidate 1: empty reply"),
                     ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen': chosen: empty reply")]:
        write_jsonl(tmp_path / "in.jsonl", [row])
        with pytest.raises(DataError, match=rf"in.jsonl:1: {msg}"):
            score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)


def test_a_bad_row_never_costs_an_existing_output_and_the_input_is_not_the_output(pm, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", rows(5))
    score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    before = (tmp_path / "out.jsonl").read_bytes()
    (tmp_path / "bad.jsonl").write_text((tmp_path / "in.jsonl").read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:6: invalid JSON"):
        score_file(pm, tmp_path / "bad.jsonl", tmp_path / "out.jsonl", overwrite=True, progress=False)
    assert (tmp_path / "out.jsonl").read_bytes() == before
    src = (tmp_path / "in.jsonl").read_bytes()
    for kw in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(BulkOutputError, match="is the input file"):
            score_file(pm, tmp_path / "in.jsonl", tmp_path / "in.jsonl", progress=False, **kw)
    assert (tmp_path / "in.jsonl").read_bytes() == src


def test_crash_then_resume_equals_an_uninterrupted_run(pm, tmp_path, monkeypatch):
    inputs = rows(30)
    write_jsonl(tmp_path / "in.jsonl", inputs)
    score_file(pm, tmp_path / "in.jsonl", tmp_path / "ref.jsonl", batch_rows=4, progress=False)
    ref = (tmp_path / "ref.jsonl").read_bytes()

    real, calls = bulk.score_window, []

    def crash_on_third(pm_, w, *a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies between windows
        return real(pm_, w, *a)

    monkeypatch.setattr(bulk, "score_window", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_rows=4, progress=False)
    monkeypatch.undo()
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 8
    # a write cut mid-line, and a window the last run had only partly written
    (tmp_path / "out.jsonl").write_bytes(b"".join(lines[:6]) + lines[6][:17])
    with pytest.raises(BulkOutputError, match="--resume"):
        score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_rows=4, progress=False)
    res = score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_rows=4, resume=True, progress=False)
    assert (res.resumed, res.rows) == (6, 24)
    assert (tmp_path / "out.jsonl").read_bytes() == ref
    res = score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_rows=4, resume=True, progress=False)
    assert (res.resumed, res.rows) == (30, 0) and (tmp_path / "out.jsonl").read_bytes() == ref


def test_resume_refuses_the_output_of_another_input(pm, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows(6))
    write_jsonl(tmp_path / "b.jsonl", rows(6, seed=1)[::-1])
    score_file(pm, tmp_path / "a.jsonl", tmp_path / "out.jsonl", batch_rows=4, progress=False)
    with pytest.raises(BulkOutputError, match="another input"):
        score_file(pm, tmp_path / "b.jsonl", tmp_path / "out.jsonl", batch_rows=4, resume=True, progress=False)
    write_jsonl(tmp_path / "short.jsonl", rows(4))
    with pytest.raises(BulkOutputError, match="more rows"):
        score_file(pm, tmp_path / "short.jsonl", tmp_path / "out.jsonl", batch_rows=4, resume=True, progress=False)
    res = score_file(pm, tmp_path / "b.jsonl", tmp_path / "out.jsonl", overwrite=True, progress=False)
    assert res.rows == 6


def test_resume_checks_each_written_row_against_its_input_row_even_without_ids(pm, tmp_path):
    """Rows without ids match by position; their number of rewards and heads must match too."""
    two = [{"prompt": f"q{i}", "candidates": ["a", "b"]} for i in range(4)]
    three = [{"prompt": f"q{i}", "candidates": ["a", "b", "c"]} for i in range(4)]
    pairs = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(4)]
    write_jsonl(tmp_path / "two.jsonl", two)
    write_jsonl(tmp_path / "three.jsonl", three)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    score_file(pm, tmp_path / "two.jsonl", tmp_path / "out.jsonl", batch_rows=2, progress=False)
    cut = b"".join((tmp_path / "out.jsonl").read_bytes().splitlines(keepends=True)[:3])
    for src, msg in [("three.jsonl", "does not hold 3 rewards"), ("pairs.jsonl", "does not hold a chosen / rejected pair")]:
        (tmp_path / "out.jsonl").write_bytes(cut)
        with pytest.raises(BulkOutputError, match=msg):
            score_file(pm, tmp_path / src, tmp_path / "out.jsonl", batch_rows=2, resume=True, progress=False)
    head = pm.head_names[0]
    (tmp_path / "out.jsonl").write_bytes(cut)
    with pytest.raises(BulkOutputError, match="rewards of heads"):
        score_file(pm, tmp_path / "two.jsonl", tmp_path / "out.jsonl", resume=True, heads=[head], progress=False)
    res = score_file(pm, tmp_path / "two.jsonl", tmp_path / "out.jsonl", batch_rows=2, resume=True, progress=False)
    assert (res.resumed, res.rows) == (3, 1)
    assert_matches(pm, two, read_jsonl(tmp_path / "out.jsonl"))


def test_one_head_of_several_is_scored_when_asked(pm, tmp_path):
    inputs = rows(6)
    write_jsonl(tmp_path / "in.jsonl", inputs)
    head = pm.head_names[-1]
    score_file(pm, tmp_path / "in.jsonl", tmp_path / "out.jsonl", heads=[head], progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert all(list(r["rewards"]) == [head] for r in out)
    full = score_records(pm, inputs)
    assert all(torch.allclose(torch.tensor(_flat(a["rewards"][head])), torch.tensor(_flat(b["rewards"][head])), atol=1e-4)
               for a, b in zip(out, full))
    with pytest.raises(ValueError, match="no head named 'nope'"):
        score_file(pm, tmp_path / "in.jsonl", tmp_path / "o2.jsonl", heads=["nope"], progress=False)


def test_dataframe_records_are_read_as_rows(pm, tmp_path):
    """What Ray Data / Spark hand a batch function: DataFrame records, with array cells and NaN
    or None where a row lacks a key other rows have."""
    pd = pytest.importorskip("pandas")
    inputs = rows(7)
    write_jsonl(tmp_path / "in.jsonl", inputs)
    frame = pd.read_json(tmp_path / "in.jsonl", lines=True, dtype=False)
    records = frame.to_dict("records")
    assert any(isinstance(v, float) for r in records for v in r.values())  # the NaN of a missing key
    got = score_records(pm, records)
    want = score_records(pm, inputs)
    assert [r["id"] for r in got] == [w["id"] if not isinstance(w["id"], int) or "id" in inputs[i] else i
                                     for i, w in enumerate(want)]
    for a, b in zip(got, want):
        for h in b["rewards"]:
            assert torch.allclose(torch.tensor(_flat(a["rewards"][h])), torch.tensor(_flat(b["rewards"][h])), atol=1e-4)


def test_score_records_is_one_batch_step(pm):
    inputs = rows(5)
    assert_matches(pm, inputs, score_records(pm, inputs))
    assert score_records(pm, []) == []


# ----------------------------------------------------------------------------- the command, for real
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A tiny model in an HF cache layout, and a head folder trained on it (by name)."""
    home = tmp_path_factory.mktemp("hf")
    bb, tok = make_backbone("llama")
    save_to_hub_cache(bb, tok, "tiny/bulk", home)
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/bulk")
    torch.manual_seed(0)
    pm.add_head("a", "swiglu", init_std=0.5)
    pm.add_head("b", "identity", activate=False)
    heads = home / "heads"
    pm.save_heads(heads)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return {"heads": heads, "env": env, "pm": pm}


def cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "prefheads.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def test_kill_9_then_resume_gives_the_uninterrupted_output(hub, tmp_path):
    inputs = rows(600)
    write_jsonl(tmp_path / "in.jsonl", inputs)
    args = ["score", "--heads", str(hub["heads"]), "--input", str(tmp_path / "in.jsonl"), "--batch-rows", "3",
            "--no-progress"]
    r = cli(args + ["--out", str(tmp_path / "ref.jsonl")], hub["env"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "scored 600 rows (0 already done)" in r.stdout

    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "prefheads.cli", *args, "--out", str(out)], env=hub["env"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 30):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = out.read_bytes().count(b"\n")
    assert 30 <= killed_at < 600, "the run must be killed mid-way"
    with open(out, "ab") as f:
        f.write(b'{"id": "torn", "rewa')  # a write the kill cut short
    r = cli(args + ["--out", str(out), "--resume"], hub["env"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert_matches(hub["pm"], inputs, read_jsonl(out))


def test_two_process_accelerate_run_equals_one_process(hub, tmp_path):
    inputs = rows(41)
    write_jsonl(tmp_path / "in.jsonl", inputs)
    common = ["--heads", str(hub["heads"]), "--input", str(tmp_path / "in.jsonl"), "--batch-rows", "4", "--no-progress"]
    r = cli(["score", *common, "--out", str(tmp_path / "one.jsonl")], hub["env"])
    assert r.returncode == 0, r.stderr[-2000:]
    # accelerate's own way to start two CPU processes (torchrun underneath); `--cpu` would start one
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "prefheads.cli", "score",
           *common, "--out", str(tmp_path / "two.jsonl")]
    r = subprocess.run(cmd, env=hub["env"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on process 0 of 2" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.jsonl", "two.jsonl"]  # parts merged away
    one, two = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "two.jsonl")
    assert [o["id"] for o in two] == [o["id"] for o in one]
    assert_matches(hub["pm"], inputs, two, tol=1e-5)
    for a, b in zip(one, two):
        assert json.dumps(a["rewards"], sort_keys=True).count(",") == json.dumps(b["rewards"], sort_keys=True).count(",")
        fa = torch.tensor([x for h in sorted(a["rewards"]) for x in _flat(a["rewards"][h])])
        fb = torch.tensor([x for h in sorted(b["rewards"]) for x in _flat(b["rewards"][h])])
        assert torch.allclose(fa, fb, atol=1e-5)


def _flat(v):
    return [v["chosen"], v["rejected"]] if isinstance(v, dict) else v


def test_a_cpu_launch_that_starts_one_process_is_refused(hub, tmp_path):
    from prefheads.commands.score import check_one_process_launch

    write_jsonl(tmp_path / "in.jsonl", rows(3))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "prefheads.cli", "score", "--heads",
           str(hub["heads"]), "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl")]
    r = subprocess.run(cmd, env=hub["env"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--multi_gpu --num_processes N" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()
    check_one_process_launch(1, {"ACCELERATE_USE_CPU": "True"})  # --cpu, one process: fine
    check_one_process_launch(2, {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "x", "WORLD_SIZE": "2"})


def test_command_forms_are_checked(hub, tmp_path):
    r = cli(["score", "--heads", str(hub["heads"])], hub["env"])
    assert r.returncode != 0 and "--prompt with --candidate, or --input with --out" in r.stderr
    r = cli(["score", "--heads", str(hub["heads"]), "--input", "x.jsonl"], hub["env"])
    assert r.returncode != 0 and "--input needs --out" in r.stderr
