"""Every code block in docs/ runs as written (tiny stand-in models under real hub ids)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_backbone, save_to_hub_cache

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
STAND_INS = {"Qwen/Qwen1.5-0.5B-Chat": "qwen2"}


def blocks(page: Path, lang: str) -> list[str]:
    return [code for kind, code in BLOCK.findall(page.read_text()) if kind == lang]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf")
    for repo, family in STAND_INS.items():
        bb, tok = make_backbone(family)
        save_to_hub_cache(bb, tok, repo, home)
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", PATH=bindir + os.pathsep + os.environ["PATH"],
                PREFHEADS_CACHE=str(tmp_path_factory.mktemp("cache")))


PY_PAGES = sorted(p.name for p in DOCS.glob("*.md") if blocks(p, "python"))


@pytest.mark.parametrize("page", PY_PAGES)
def test_python_blocks_run_in_order(page, env, tmp_path):
    script = "\n\n".join(blocks(DOCS / page, "python"))
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{page}:\n{r.stderr[-3000:]}"


SH_PAGES = sorted(p.name for p in DOCS.glob("*.md") if blocks(p, "bash"))


@pytest.mark.parametrize("page", SH_PAGES)
def test_bash_blocks_run_as_written(page, env, tmp_path):
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"Question {i}: is the sky blue?", "chosen": "Yes, on a clear day.",
                    "rejected": "No."}) + "\n" for i in range(24)))
    for code in blocks(DOCS / page, "bash"):
        for line in code.strip().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            r = subprocess.run(shlex.split(line, comments=True), env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, f"{page}: {line}\n{r.stderr[-3000:]}"


def test_yaml_blocks_parse_as_profiles():
    from prefheads.families import FamilyProfile

    for page in DOCS.glob("*.md"):
        for code in blocks(page, "yaml"):
            raw = yaml.safe_load(code)
            if "model_type" in raw:
                FamilyProfile(model_type=raw["model_type"], layers=raw["layers"], final_norm=raw["final_norm"])


def test_cli_reference_is_generated_from_the_app():
    from prefheads.docgen import cli_markdown

    assert (DOCS / "cli.md").read_text().strip() == cli_markdown().strip(), \
        "docs/cli.md is stale: python -m prefheads.docgen > docs/cli.md"
