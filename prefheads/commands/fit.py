"""``prefheads fit``: the options of :class:`~prefheads.training.FitConfig`, one per field."""

from __future__ import annotations

import typer

from prefheads.cliargs import command_from_dataclass
from prefheads.commands._common import quiet
from prefheads.training.config import FitConfig


def run_fit(cfg: FitConfig) -> None:
    """Train a reward head (frozen backbone, LoRA, or full fine-tuning) and save it."""
    quiet()
    from prefheads.training import fit

    res = fit(cfg)
    d = res.data
    typer.echo(f"data: {d['rows']} rows ({d['candidates']} candidates); {d['skipped']} bad rows skipped, "
               f"{d['dropped']} dropped without a preference signal; {d['truncated']} candidates over the "
               f"{d['max_length']}-token context, cut ({d['truncation']})")
    chosen = (f"solver ridge: {cfg.cv_folds}-fold cross-validated choice accuracy {res.best['val_accuracy']:.3f}"
              if cfg.solver == "ridge" else
              f"best epoch {res.best_epoch}: val pair accuracy {res.best['val_pair_accuracy']:.3f}")
    typer.echo(f"head {res.head_name!r} saved to {res.out} (mode {cfg.mode}; {chosen}; train {res.n_train}, val {res.n_val}; "
               f"setup {res.setup_seconds:.1f}s{' (feature cache hit)' if res.cache_hit else ''}, "
               f"training {res.train_seconds:.1f}s)")


def register(app: typer.Typer) -> None:
    """Add ``fit`` to the CLI."""
    app.command(name="fit", help="Train a reward head (frozen backbone, LoRA, or full fine-tuning) and save it.",
                epilog="docs/cli.md describes every option in full.")(
        command_from_dataclass(FitConfig, run_fit))
