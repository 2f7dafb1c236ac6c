"""``prefheads demo``: fit a head on bundled OpenBookQA with bundled SmolLM2, compare it with log-prob."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prefheads.commands._common import quiet


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo head is saved.")] = Path("runs/demo"),
    max_train: Annotated[Optional[int], typer.Option(help="Training questions (default: all 1,000 bundled).")] = None,
    max_eval: Annotated[Optional[int], typer.Option(help="Test questions (default: all 500 bundled).")] = None,
    epochs: Annotated[int, typer.Option(help="Head epochs.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace what an earlier run with other options left in --out.")] = False,
) -> None:
    """Fit a head on bundled OpenBookQA with bundled SmolLM2 and compare it with log-prob scoring."""
    quiet()
    from prefheads.demo import run_demo

    run_demo(out=out, max_train=max_train, max_eval=max_eval, epochs=epochs, seed=seed, overwrite=overwrite)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the CLI."""
    app.command()(demo)
