"""The ``prefheads`` command line: a thin typer layer over functions a notebook can call."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

DEBUG_ENV = "PREFHEADS_DEBUG"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Direct Preference Heads for any Hugging Face causal LM.")


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help=f"Show the full traceback of an error "
                                                 f"(or set {DEBUG_ENV}=1).")] = False) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _run_fit(cfg) -> None:
    """Train a reward head (frozen backbone, LoRA, or full fine-tuning) and save it."""
    _quiet()
    from prefheads.training import fit as run_fit

    res = run_fit(cfg)
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


def _register_fit() -> None:
    from prefheads.cliargs import command_from_dataclass
    from prefheads.training.config import FitConfig

    app.command(name="fit", help="Train a reward head (frozen backbone, LoRA, or full fine-tuning) and save it.")(
        command_from_dataclass(FitConfig, _run_fit))


_register_fit()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo head is saved.")] = Path("runs/demo"),
    max_train: Annotated[Optional[int], typer.Option(help="Training questions (default: all 500 bundled).")] = None,
    max_eval: Annotated[Optional[int], typer.Option(help="Test questions (default: all 200 bundled).")] = None,
    epochs: Annotated[int, typer.Option(help="Head epochs.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Fit a head on bundled OpenBookQA with bundled SmolLM2 and compare it with log-prob scoring."""
    _quiet()
    from prefheads.demo import run_demo

    run_demo(out=out, max_train=max_train, max_eval=max_eval, epochs=epochs, seed=seed)


from prefheads.commands import register_all  # noqa: E402 - after the core commands

register_all(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: an error prints one line (``--debug`` or ``PREFHEADS_DEBUG=1``: the traceback)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="prefheads", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the user sees one clear line, not a traceback
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # usage errors (click's): their own formatting
            e.show()
            sys.exit(e.exit_code)
        if "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        msg = str(e) or type(e).__name__
        name = type(e).__name__
        prefix = "" if name in _PLAIN_ERRORS else f"{name}: "
        typer.echo(f"error: {prefix}{msg}\n(run with --debug for the full traceback)", err=True)
        sys.exit(1)


# errors whose message already says everything; others are prefixed with their type
_PLAIN_ERRORS = {"DataError", "HeadFileError", "OutputDirError", "PromptError", "TooLongError", "ValueError",
                 "FileNotFoundError", "RewardTokenError", "SpecError", "KeyError"}


if __name__ == "__main__":  # pragma: no cover
    main()
