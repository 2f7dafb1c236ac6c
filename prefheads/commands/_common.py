"""What several commands share: their common options, quiet loading, and a model from head folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

HeadsDir = Annotated[Path, typer.Option(help="Head folder.")]
Base = Annotated[Optional[str], typer.Option(help="Hub id, local folder or GGUF file (default: the heads' base, "
                                                  "else bundled SmolLM2-135M-Instruct).")]
HeadOpt = Annotated[Optional[str], typer.Option(help="Head to score with (default: the folder's active head).")]
Mismatch = Annotated[bool, typer.Option(help="Load heads trained on another base.")]
DataDir = Annotated[Optional[str], typer.Option(
    help="Folder of local dataset copies, or 'bundled' (default: $PREFHEADS_DATA, else the hub).")]
Load4 = Annotated[Optional[bool], typer.Option("--load-in-4bit/--no-load-in-4bit", help=(
    "Load the backbone 4-bit NF4 quantized (bitsandbytes; CPU or CUDA). Default: as the heads' base was "
    "when they were trained, else not."))]
Load8 = Annotated[Optional[bool], typer.Option("--load-in-8bit/--no-load-in-8bit", help=(
    "Load the backbone 8-bit quantized (bitsandbytes; CPU or CUDA). Default: as the heads' base was when "
    "they were trained, else not."))]


def quiet() -> None:
    """Keep transformers' warnings and progress bars off the terminal of a command."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def console(width: int = 200) -> Any:
    """A rich console: the terminal's width, or ``width`` columns when output is not a terminal."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=width)


def load_base(base: Optional[str], load_in_4bit: Optional[bool] = None,
              load_in_8bit: Optional[bool] = None) -> PreferenceModel:
    """A backbone without heads (``base``; None: the bundled model), quantized as the flags say."""
    from prefheads.loading import backbone_quantization, quantization_kwargs
    from prefheads.model import PreferenceModel

    quiet()
    return PreferenceModel.from_pretrained(base, **quantization_kwargs(*backbone_quantization(load_in_4bit,
                                                                                             load_in_8bit)))


def load_heads(heads: Path | list[Path], base: Optional[str], allow_base_mismatch: bool = False,
               names: list[str] | None = None, load_in_4bit: Optional[bool] = None,
               load_in_8bit: Optional[bool] = None) -> PreferenceModel:
    """Head folders on the base of the first (or ``base``): :meth:`PreferenceModel.from_heads`,
    the backbone quantized as the flags say or, with neither, as the first folder records.

    Two folders holding a head of one name are refused (one would silently replace the other).
    """
    from prefheads.headio import read_config
    from prefheads.model import PreferenceModel

    folders = [heads] if isinstance(heads, Path) else list(heads)
    seen: dict[str, Path] = {}
    for folder in folders:
        for name in read_config(folder)["heads"]:
            if name in seen and seen[name].resolve() != folder.resolve():
                raise typer.BadParameter(f"head {name!r} is in both {seen[name]} and {folder}; serve folders "
                                         "whose head names differ")
            seen[name] = folder
    quiet()
    return PreferenceModel.from_heads(folders, base, names=names, allow_base_mismatch=allow_base_mismatch,
                                      load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
