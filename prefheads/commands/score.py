"""``prefheads score``: a few candidates from the command line, or a whole JSONL file (bulk)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Optional

import typer

from prefheads.commands._common import Base, HeadOpt, HeadsDir, Load4, Load8, Mismatch, load_heads


MULTI_CPU_HINT = ("on CPU, start N processes with `accelerate launch --multi_gpu --num_processes N -m prefheads.cli "
                  "score ...` (without GPUs it runs N CPU processes) or `torchrun --nproc_per_node N -m prefheads.cli score ...`")


def check_one_process_launch(num_processes: int, env: Mapping[str, str] | None = None) -> None:
    """Refuse ``accelerate launch --cpu --num_processes N``: accelerate starts N CPU processes only
    under mpirun, so it runs ONE process (it sets ``MASTER_ADDR`` for the others that never come)."""
    env = os.environ if env is None else env
    launched_by_mpi = any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if num_processes == 1 and str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true") \
            and "MASTER_ADDR" in env and not launched_by_mpi:
        raise RuntimeError("accelerate launch --cpu --num_processes N started a single process (accelerate starts "
                           "several CPU processes only under mpirun); " + MULTI_CPU_HINT)


def _bulk(pm, input: Path, out: Path, resume: bool, overwrite: bool, batch_rows: int, progress: bool,
          head: str | None = None) -> None:
    """Score ``input`` into ``out`` (every head, or ``head``), sharded over the processes of an ``accelerate launch``."""
    import torch
    from accelerate import PartialState

    from prefheads.infer.bulk import score_file
    from prefheads.training.loop import check_launch

    # without an accelerator, several processes are CPU data parallel (gloo); accelerate only
    # sets that up when told so
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    check_launch(state.num_processes, state.distributed_type)
    check_one_process_launch(state.num_processes)
    pm.to(state.device)
    res = score_file(pm, input, out, resume=resume, overwrite=overwrite, batch_rows=batch_rows,
                     rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
                     progress=progress, heads=[head] if head else None)
    if state.is_main_process:
        rate = res.rows / res.seconds if res.seconds else 0.0
        typer.echo(f"scored {res.rows} rows ({res.resumed} already done) in {res.seconds:.1f}s, {rate:.2f} rows/s"
                   + (f" on process 0 of {state.num_processes}" if state.num_processes > 1 else "")
                   + f", heads {[head] if head else pm.head_names}: {res.out}")


def score_command(
    heads: HeadsDir,
    prompt: Annotated[Optional[str], typer.Option(help="User prompt (with --candidate).")] = None,
    candidate: Annotated[Optional[list[str]], typer.Option(help="A candidate answer (repeat the option).")] = None,
    input: Annotated[Optional[Path], typer.Option(help='Bulk: JSONL of {"id", "prompt", "candidates"} or '
                                                       '{"id", "prompt", "chosen", "rejected"} rows.')] = None,
    out: Annotated[Optional[Path], typer.Option(help="Bulk: output JSONL, every head's rewards per row, in input order.")] = None,
    resume: Annotated[bool, typer.Option(help="Bulk: continue an interrupted run's output (rows done are skipped).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Bulk: replace an existing output.")] = False,
    batch_rows: Annotated[int, typer.Option(help="Bulk: rows scored together, then written and fsynced.")] = 256,
    progress: Annotated[bool, typer.Option(help="Bulk: show a progress bar.")] = True,
    head: HeadOpt = None,
    base: Base = None,
    allow_base_mismatch: Mismatch = False,
    load_in_4bit: Load4 = None,
    load_in_8bit: Load8 = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (--prompt form).")] = False,
) -> None:
    """Print each candidate's reward, best first; or score a JSONL file of rows with every head, or --head's (--input, --out).

    The bulk form runs unchanged under `accelerate launch --num_processes N` or `torchrun` (each
    process scores its share of rows; the first merges them in input order).
    """
    if (prompt is None) == (input is None):
        raise typer.BadParameter("give --prompt with --candidate, or --input with --out")
    if prompt is not None and not candidate:
        raise typer.BadParameter("--prompt needs at least one --candidate")
    if input is not None and out is None:
        raise typer.BadParameter("--input needs --out")
    pm = load_heads(heads, base, allow_base_mismatch, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
    if input is not None:
        if head is not None and head not in pm.heads:
            raise typer.BadParameter(f"no head named {head!r}; heads: {pm.head_names}")
        _bulk(pm, input, out, resume, overwrite, batch_rows, progress, head)
        return
    rewards = pm.score(prompt, candidate, head=head).tolist()
    ranked = sorted(zip(candidate, rewards), key=lambda x: -x[1])
    if as_json:
        typer.echo(json.dumps([{"candidate": c, "reward": r} for c, r in ranked]))
        return
    for i, (c, r) in enumerate(ranked, 1):
        typer.echo(f"{i}. {r:+.4f}  {c}")


def register(app: typer.Typer) -> None:
    """Add ``score`` to the CLI."""
    app.command(name="score")(score_command)
