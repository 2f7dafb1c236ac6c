"""The ``--out`` folder of a run: checked before anything is written, never emptied of user files.

A run may write into a folder that does not exist, is empty, or holds the output of the same
run (identical options: a rerun, or ``--resume``). Anything else — a folder of the user's own
files, or another run's heads — is refused unless ``overwrite`` is set, and even then prefheads
only replaces the files it writes itself: a file it did not write is never deleted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefheads.headio import listed_files

# what fit (and the commands built on it: demo, layers, recipes) writes into an output folder
OWN_FILES = frozenset({"heads.json", "README.md", "fit_config.json", "metrics.jsonl", "history.json",
                       "layer_scores.json", "results.json", "layers.json", "layers.png", "stage.json"})
OWN_DIRS = frozenset({"adapter", "backbone", "checkpoint", "layers"})
# a checkpoint swap cut short leaves the previous checkpoint as checkpoint.old (resumed from) and,
# killed mid-write, a temporary folder (removed when the run starts again)
OWN_DIR_PATTERN = re.compile(r"checkpoint\.old|\.checkpoint\.tmp-.+")
# options that change how a run executes, not what it produces (fsdp: the same result within float
# tolerance, so a sharded run may resume in one process and the other way round)
EXECUTION_ONLY = frozenset({"out", "overwrite", "resume", "save_every", "log_with", "cache_dir", "feature_cache",
                            "fsdp"})


class OutputDirError(ValueError):
    """An output folder that a run would damage (user files, another run's output)."""


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that prefheads did not write (sorted)."""
    listed = listed_files(folder)  # written here by prefheads: its own heads.json names them
    out = []
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            ours = p.name in OWN_DIRS or bool(OWN_DIR_PATTERN.fullmatch(p.name))
        else:
            ours = p.name in OWN_FILES or p.name in listed or bool(re.fullmatch(r"\.(heads\.json|.+\.safetensors)\..+\.tmp", p.name))
        if not ours:
            out.append(p.name)
    return sorted(out)


def _run_options(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k not in EXECUTION_ONLY}
    if isinstance(out.get("layer"), str) and out["layer"].lstrip("-").isdigit():
        out["layer"] = int(out["layer"])  # recorded as a string ("-1") by earlier versions
    return out


def check_out_dir(out: Path, options: dict[str, Any], overwrite: bool) -> None:
    """Refuse an ``out`` folder this run must not write into (see the module docstring).

    Args:
        out: The output folder.
        options: This run's options (``FitConfig.to_dict()``).
        overwrite: The user allowed writing into a non-empty folder.

    Raises:
        OutputDirError: naming the folder, what is in the way, and the way out.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputDirError(f"--out {out}: exists and is not a folder")
    if overwrite or not any(out.iterdir()):
        return
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputDirError(f"--out {out}: the folder holds files prefheads did not write ({shown}); choose "
                             "another folder, or pass --overwrite to write beside them (they are kept)")
    prev = out / "fit_config.json"
    if not prev.is_file():
        if (out / "heads.json").is_file():
            raise OutputDirError(f"--out {out}: holds heads saved outside a training run; choose another folder "
                                 "or pass --overwrite to replace them")
        return
    try:
        old = _run_options(json.loads(prev.read_text()))
    except ValueError:
        raise OutputDirError(f"--out {out}: {prev.name} is not readable JSON; pass --overwrite to replace it") from None
    new = _run_options(options)
    diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diffs:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs[:6])
        raise OutputDirError(f"--out {out}: holds the output of another run ({detail}); choose another folder, "
                             "or pass --overwrite to replace that run's files")
