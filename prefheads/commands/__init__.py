"""CLI command groups. Each module defines ``register(app)``; :func:`register_all` wires them in."""

from __future__ import annotations

import importlib

import typer

# one module per concern; each adds its commands to the main app
MODULES: list[str] = ["layers"]
MODULES += ["evaluate", "infer", "score"]  # eval; rerank, serve; score (a few candidates, or bulk)
MODULES += ["recipes", "zoo"]  # prefheads run; zoo + tasks listings


def register_all(app: typer.Typer) -> None:
    """Add every command module's commands to ``app``."""
    for name in MODULES:
        importlib.import_module(f"prefheads.commands.{name}").register(app)
