"""Nothing a user gives is lost or silently changed: output folders, bad data, long inputs, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PAPER_HEAD, make_backbone, save_to_hub_cache
from prefheads import PreferenceModel
from prefheads.tasks import DataError
from prefheads.training import FitConfig, fit
from prefheads.training.outdir import OutputDirError
from test_fit_cli import _pairs_file


def _pm():
    bb, tok = make_backbone("llama")
    return PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")


def _fit(tmp_path, out, data=None, pm=None, **kw):
    data = data or _pairs_file(tmp_path / "pairs.jsonl", n=24)
    opts = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "cache_dir": str(tmp_path / "cache"), **kw}
    return fit(FitConfig(data=str(data), out=str(out), **{**PAPER_HEAD, **opts}), pm=pm or _pm(), progress=False)


def _head_sha(out: Path) -> str:
    return json.loads((out / "heads.json").read_text())["heads"]["default"]["sha256"]


# ------------------------------------------------------------------ same seed, same head
def test_cold_warm_and_no_feature_cache_give_the_same_head_bits(tmp_path):
    cold = _fit(tmp_path, tmp_path / "cold", cache_dir=str(tmp_path / "c1"))
    warm = _fit(tmp_path, tmp_path / "warm", cache_dir=str(tmp_path / "c1"))
    none = _fit(tmp_path, tmp_path / "none", feature_cache=False)
    assert (cold.cache_hit, warm.cache_hit, none.cache_hit) == (False, True, False)
    assert _head_sha(tmp_path / "cold") == _head_sha(tmp_path / "warm") == _head_sha(tmp_path / "none")
    loss = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])["loss"] for d in ("cold", "warm", "none")]
    assert loss[0] == loss[1] == loss[2]


def test_random_draws_before_fit_do_not_change_the_head(tmp_path):
    """What runs before training (a GGUF conversion draws random init weights) must not matter."""
    _fit(tmp_path, tmp_path / "a", seed=5)
    torch.manual_seed(123)
    torch.randn(1000)  # e.g. a model built from its config before the run
    _fit(tmp_path, tmp_path / "b", seed=5)
    assert _head_sha(tmp_path / "a") == _head_sha(tmp_path / "b")


def test_gguf_conversion_leaves_the_callers_rng_alone(tmp_path, monkeypatch):
    """The conversion builds a model from its config (a random init): the global RNG is restored."""
    import transformers

    from prefheads import loading

    bb, tok = make_backbone("llama")
    monkeypatch.setenv("PREFHEADS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-stand-in")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: bb)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: bb.config)
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    folder = loading.gguf_to_folder(gguf)
    assert (folder / "config.json").is_file()
    assert torch.equal(torch.rand(3), want)


# ------------------------------------------------------------------ output folders
def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    files = {"README.md": b"my notes\n", "mine.0123456789ab.safetensors": b"my weights",
             "history.json": b"[1, 2, 3]"}
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


def test_out_refuses_a_folder_of_user_files_and_writes_nothing(tmp_path):
    out = tmp_path / "mine"
    files = _user_folder(out)
    with pytest.raises(OutputDirError, match="mine.0123456789ab.safetensors.*--overwrite"):
        _fit(tmp_path, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_overwrite_writes_beside_user_files_and_never_deletes_them(tmp_path):
    out = tmp_path / "mine"
    _user_folder(out)
    _fit(tmp_path, out, overwrite=True)
    _fit(tmp_path, out, overwrite=True, seed=1)  # a second save replaces only its own head file
    assert (out / "mine.0123456789ab.safetensors").read_bytes() == b"my weights"
    assert (out / "heads.json").is_file()
    heads = [p.name for p in out.glob("default.*.safetensors")]
    assert heads == [json.loads((out / "heads.json").read_text())["heads"]["default"]["file"]]


def test_out_accepts_the_same_run_again_and_refuses_another_run(tmp_path):
    out = tmp_path / "h"
    _fit(tmp_path, out)
    first = _head_sha(out)
    _fit(tmp_path, out)  # the same command again: allowed, same bits
    assert _head_sha(out) == first
    with pytest.raises(OutputDirError, match="another run.*epochs: 2 -> 3"):
        _fit(tmp_path, out, epochs=3)
    assert _head_sha(out) == first
    _fit(tmp_path, out, epochs=3, overwrite=True)
    assert _head_sha(out) != first


# ------------------------------------------------------------------ bad data: named errors, nothing written
@pytest.mark.parametrize("content, match", [
    (b"", r"empty\.jsonl: no rows: the file is empty"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "\xff", "rejected": "c"}\n',
     r"empty\.jsonl:2: field '<encoding>': not valid UTF-8: byte 0xff"),
    (b'{"prompt": [{"role": "wizard", "content": "a"}], "chosen": "b", "rejected": "c"}\n',
     r"empty\.jsonl:1: field 'prompt\[0\]\.role': unknown role 'wizard'"),
    (b'{"prompt": "a", "chosen": "", "rejected": "c"}\n',
     r"no usable rows.*empty\.jsonl:1: field 'chosen': empty reply"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
     b'{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chosen": "c", '
     b'"rejected": "d"}\n',
     r"empty\.jsonl:2: field 'prompt\[-1\]\.role': the prompt must end with a user turn, got 'assistant'"),
    (b'{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
     b'{"role": "assistant", "content": "c"}], "rejected": "d"}\n',
     r"empty\.jsonl:1: field 'chosen\[-2\]\.role': the prompt must end with a user turn, got 'assistant'"),
])
def test_bad_data_files_are_named_errors_and_nothing_is_written(tmp_path, content, match):
    data = tmp_path / "empty.jsonl"
    data.write_bytes(content)
    with pytest.raises(DataError, match=match):
        _fit(tmp_path, tmp_path / "out", data=data)
    assert not (tmp_path / "out").exists()


def test_empty_replies_are_dropped_counted_and_recorded(tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl", n=24)
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": "x", "chosen": "  ", "rejected": "no"}) + "\n")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        res = _fit(tmp_path, tmp_path / "out", data=data)
    assert res.data["dropped"] == 1 and res.data["rows"] == 24
    meta = json.loads((tmp_path / "out" / "heads.json").read_text())["heads"]["default"]["config"]["meta"]
    assert meta["data"]["dropped"] == 1


def _long_pairs(tmp_path: Path) -> Path:
    data = _pairs_file(tmp_path / "pairs.jsonl", n=24)
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": "the quick brown fox " * 60, "chosen": "yes", "rejected": "no"}) + "\n")
    return data


def test_over_long_inputs_are_cut_counted_and_recorded(tmp_path):
    pm = _pm()
    pm.max_length = 64
    res = _fit(tmp_path, tmp_path / "out", data=_long_pairs(tmp_path), pm=pm)
    assert res.data["truncated"] == 2 and res.data["truncation"] == "left" and res.data["max_length"] == 64
    meta = json.loads((tmp_path / "out" / "heads.json").read_text())["heads"]["default"]["config"]["meta"]
    assert meta["data"]["truncated"] == 2


def test_over_long_inputs_under_truncation_error_name_the_row(tmp_path):
    pm = _pm()
    pm.max_length = 64
    with pytest.raises(DataError, match=r"pairs\.jsonl:25 candidate 0: \d+ tokens exceed the model's context of 64"):
        _fit(tmp_path, tmp_path / "out", data=_long_pairs(tmp_path), pm=pm, truncation="error")
    assert not (tmp_path / "out").exists()


def test_right_truncation_keeps_the_prompt_and_ends_on_the_reward_token():
    from prefheads.chat import encode

    pm = _pm()
    full = encode(pm.tokenizer, pm.chat, "hi", "the quick brown fox " * 20)
    cut = encode(pm.tokenizer, pm.chat, "hi", "the quick brown fox " * 20, max_length=32, truncation="right")
    assert len(cut.ids) == 32 and cut.truncated == len(full.ids) - 32
    assert cut.ids[: cut.prompt_len] == full.ids[: full.prompt_len] and cut.ids[-1] == pm.chat.reward_token_id


@pytest.mark.parametrize("prompt, match", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "must end with a user turn"),
    ([{"role": "wizard", "content": "a"}], "unknown role 'wizard'"),
    ([], "empty message list"),
])
def test_prompts_that_cannot_be_scored_are_refused(prompt, match):
    from prefheads.types import PromptError

    with pytest.raises(PromptError, match=match):
        _pm().encode([prompt], ["x"])


def test_empty_completions_are_refused():
    from prefheads.types import PromptError

    with pytest.raises(PromptError, match="empty reply"):
        _pm().encode(["q"], [" "])


# ------------------------------------------------------------------ the CLI: one line per error
def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    bb, tok = make_backbone("llama")
    save_to_hub_cache(bb, tok, "tiny/err", tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PREFHEADS_CACHE=str(tmp_path / "c"))
    env.pop("PREFHEADS_DEBUG", None)
    cmd = [sys.executable, "-m", "prefheads.cli"]
    args = ["fit", "--base", "tiny/err", "--data", str(data), "--out", str(tmp_path / "o")]
    r = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and f"error: {data}: no rows: the file is empty" in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) <= 2
    assert not (tmp_path / "o").exists()
    r = subprocess.run(cmd + ["--debug"] + args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr and "DataError" in r.stderr


def test_a_negative_time_budget_is_refused():
    from prefheads.training import FitConfig

    with pytest.raises(ValueError, match="time_budget is in minutes, >= 0"):
        FitConfig(task="glue/rte", time_budget=-1)


@pytest.mark.parametrize("args", [["zoo", "show", "no-such-family"], ["tasks", "show", "no-such-task"]])
def test_a_command_ending_in_an_exit_status_gives_it_to_the_shell(args, capsys):
    from prefheads.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (1, 2) and "error" in capsys.readouterr().err.lower()  # not 0


# ------------------------------------------------------------------ the data a frozen run can afford
def test_a_time_budget_caps_the_data_to_a_seeded_subset_and_says_so(tmp_path):
    res = _fit(tmp_path, tmp_path / "cap", time_budget=1e-9)
    b = res.data["budget"]
    assert b["examples_available"] == 24 and b["examples_used"] == 2 == res.data["rows"]
    assert b["estimated_seconds"] > 0 and b["tokens"] > 0
    meta = json.loads((tmp_path / "cap" / "heads.json").read_text())["heads"]["default"]["config"]["meta"]
    assert meta["data"]["budget"]["examples_used"] == 2
    full = _fit(tmp_path, tmp_path / "all", cache_dir=str(tmp_path / "c2"))
    assert full.data["rows"] == 24 and full.data["budget"]["examples_used"] == 24


def test_no_budget_estimate_when_the_rows_are_cached_or_capped(tmp_path):
    _fit(tmp_path, tmp_path / "a")
    again = _fit(tmp_path, tmp_path / "b", time_budget=1e-9)  # cache hit: the pass costs nothing
    assert again.data["rows"] == 24 and "budget" not in again.data
    capped = _fit(tmp_path, tmp_path / "c", max_train=10, cache_dir=str(tmp_path / "c3"))
    assert "budget" not in capped.data


def test_the_budget_prices_the_raw_view_pass_when_the_fit_reads_it(tmp_path):
    """The default head also runs the raw view: its tokens join the estimate (same rows, same rate)."""
    ridge = {"pooler": "identity", "objective": None, "solver": "ridge", "layer": -1, "lm_score": "auto"}
    pm = _pm()
    both = _fit(tmp_path, tmp_path / "both", pm=pm, cache_dir=str(tmp_path / "r1"), **ridge)
    chat = _fit(tmp_path, tmp_path / "chat", pm=pm, cache_dir=str(tmp_path / "r2"), raw_view=False, **ridge)
    assert both.data["budget"]["examples_used"] == chat.data["budget"]["examples_used"] == 24
    assert both.data["budget"]["tokens"] > chat.data["budget"]["tokens"] > 0
    # the chat-turn features are cached now (r2): only the raw view's pass is left to price
    raw = _fit(tmp_path, tmp_path / "raw", pm=pm, cache_dir=str(tmp_path / "r2"), **ridge)
    assert raw.data["budget"]["tokens"] == both.data["budget"]["tokens"] - chat.data["budget"]["tokens"]
    again = _fit(tmp_path, tmp_path / "again", pm=pm, cache_dir=str(tmp_path / "r2"), **ridge)
    assert "budget" not in again.data  # both passes paid for


def test_a_raw_view_score_without_the_raw_view_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="read in the raw view: drop --no-raw-view"):
        FitConfig(task="glue/sst2", out="x", lm_score="raw:logprob_sum", raw_view=False)
