"""``prefheads run <recipe.yaml> [key=value ...]``: validate a recipe config and run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prefheads.commands._common import quiet


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to ``app``."""

    @app.command("run")
    def run_recipe(
        config: Annotated[Path, typer.Argument(help="Recipe YAML (recipes/*.yaml).")],
        overrides: Annotated[Optional[list[str]], typer.Argument(
            help="key=value overrides, dotted for nested fields (stages.sft.steps=10); values are YAML.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the resolved config; run nothing.")] = False,
        progress: Annotated[bool, typer.Option(help="Progress bars inside training.")] = False,
    ) -> None:
        """Run a recipe (in-house pipeline, Qwen1.5 probes, task heads) from its YAML config.

        The resolved config (CLI > file > defaults) is saved as <out>/resolved_config.yaml.
        """
        from prefheads.recipes import ConfigError, dump_yaml, load_config, run

        quiet()
        try:
            cfg = load_config(config, overrides or [])
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        if dry_run:
            typer.echo(dump_yaml(cfg), nl=False)
            return
        typer.echo(f"recipe {cfg.recipe}: {cfg.description or config} -> {cfg.out}")
        run(cfg, progress=progress)
        typer.echo(f"done: {cfg.out} (resolved config: {Path(cfg.out) / 'resolved_config.yaml'})")
