"""The ``prefheads`` command line: the typer app and its commands (each in :mod:`prefheads.commands`).

A thin layer over functions a notebook can call: every command module defines ``register(app)``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Optional

import typer

from prefheads.commands import demo, evaluate, fit, infer, layers, recipes, score, zoo

DEBUG_ENV = "PREFHEADS_DEBUG"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Direct Preference Heads for any Hugging Face causal LM.")


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help=f"Show the full traceback of an error "
                                        f"(or set {DEBUG_ENV}=1).")] = False,
    plugin: Annotated[Optional[list[str]], typer.Option(
        "--plugin", metavar="MODULE", help="Import MODULE first: the poolers, losses or training modes it "
                                           "registers become available (repeat for several).")] = None,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    for module in plugin or []:
        importlib.import_module(module)


for _module in (fit, demo, layers, evaluate, infer, score, recipes, zoo):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: an error prints one line (``--debug`` or ``PREFHEADS_DEBUG=1``: the traceback)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        # without standalone mode click hands back a command's typer.Exit(n) as a return value
        rc = app(args=args, prog_name="prefheads", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
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
                 "FileNotFoundError", "RewardTokenError", "SpecError", "KeyError", "LayerError"}


if __name__ == "__main__":  # pragma: no cover
    main()
