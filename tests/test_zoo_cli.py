"""``prefheads zoo`` / ``zoo show``, ``prefheads tasks`` / ``tasks show`` and ``prefheads run --dry-run`` (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefheads.cli import app
from prefheads.families import profiles

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), terminal_width=200)


def test_zoo_lists_every_family_and_the_head_cards():
    r = _run("zoo")
    assert r.exit_code == 0, r.output
    for mt, p in profiles().items():
        assert mt in r.output and p.layers in r.output
    assert "<|im_end|>" in r.output and "model.decoder.final_layer_norm" in r.output
    assert "smollm2-openbookqa-demo" in r.output  # zoo/heads/*.md


def test_zoo_show_prints_one_profile():
    r = _run("zoo", "show", "qwen2")
    assert r.exit_code == 0, r.output
    lines = dict(ln.split(":", 1) for ln in r.output.strip().splitlines())
    assert lines["layers"].strip() == "model.layers" and lines["final_norm"].strip() == "model.norm"
    assert lines["end_of_turn"].strip() == "<|im_end|>" and "q_proj" in lines["lora_targets"]
    assert lines["file"].strip().endswith("zoo/families/qwen2.yaml")


def test_zoo_show_unknown_family_lists_the_known_ones():
    r = _run("zoo", "show", "gpt5")
    assert r.exit_code == 2
    assert "unknown model family 'gpt5'" in r.output and "llama" in r.output and "qwen2" in r.output


def test_zoo_show_a_head_card():
    r = _run("zoo", "show", "smollm2-openbookqa-demo")
    assert r.exit_code == 0 and "prefheads demo" in r.output


def test_head_cards_reference_weights_without_committing_them():
    cards = sorted((ROOT / "zoo" / "heads").glob("*.md"))
    assert cards
    assert not list((ROOT / "zoo" / "heads").glob("*.safetensors"))
    for c in cards:
        text = c.read_text()
        assert "## Reproduce" in text and "```" in text, c.name


def test_tasks_lists_every_task():
    from prefheads import tasks

    r = _run("tasks", "--no-sizes")
    assert r.exit_code == 0, r.output
    for t in tasks.list_tasks():
        assert t in r.output
    assert "nyu-mll/glue" in r.output and "glue (9)" in r.output


def test_tasks_with_local_sizes(shared_data):
    r = _run("tasks", "--data-dir", str(shared_data))
    assert r.exit_code == 0, r.output
    assert "validation:277" in r.output  # RTE dev
    assert "train:missing" in r.output  # e.g. BoolQ train is hub-only here


def test_tasks_show_renders_an_example_as_the_model_sees_it(shared_data):
    r = _run("tasks", "show", "glue/rte", "--data-dir", str(shared_data))
    assert r.exit_code == 0, r.output
    out = r.output
    assert "# glue/rte" in out and "validation: 277 rows" in out and "RTE/dev.tsv" in out
    assert "<|im_start|>system\nBelow is an instruction that describes a task." in out
    assert "Question: Do both sentences mean the same thing?\nAnswer:<|im_end|>\n<|im_start|>assistant\n" in out
    assert "[x] no" in out or "[x] yes" in out
    tail = out.split("full sequence of the preferred candidate", 1)[1]
    assert tail.rstrip().endswith("<|im_end|>")


def test_tasks_show_bundled_and_errors():
    r = _run("tasks", "show", "openbookqa", "--data-dir", "bundled", "--split", "test", "--index", "2")
    assert r.exit_code == 0, r.output
    assert "Choices:" in r.output and "[x]" in r.output
    r = _run("tasks", "show", "glue/sst3")
    assert r.exit_code == 2 and "unknown task 'glue/sst3'" in r.output and "glue/sst2" in r.output


def test_run_dry_run_prints_the_resolved_config():
    r = _run("run", str(ROOT / "recipes/inhouse-tiny.yaml"), "stages.sft.steps=33", "seed=5", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "recipe: inhouse" in r.output and "steps: 33" in r.output and "seed: 5" in r.output


@pytest.mark.parametrize("override, message", [
    ("stages.sft.stepz=3", "stages.sft.stepz: unknown key; did you mean 'steps'"),
    ("stages.align.beta=high", "stages.align.beta: expected a number"),
])
def test_run_config_errors_exit_2_naming_the_key(override, message):
    r = _run("run", str(ROOT / "recipes/inhouse-tiny.yaml"), override, "--dry-run")
    assert r.exit_code == 2 and message in r.output and "inhouse-tiny.yaml" in r.output
