"""``prefheads eval``: score tasks both ways (log-prob and every head), save, report, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prefheads.commands._common import Base, DataDir, Load4, Load8, Mismatch, console, load_base, load_heads


def eval_command(
    files: Annotated[Optional[list[Path]], typer.Argument(help="With --compare: results files to show side by side.")] = None,
    heads: Annotated[Optional[Path], typer.Option(help="Head folder (every head in it is evaluated). Without it: log-prob only.")] = None,
    task: Annotated[Optional[list[str]], typer.Option(help="Task or group (glue, gpt4all, race, glue/rte, pairs:<file>...); repeat or comma-separate.")] = None,
    base: Base = None,
    data_dir: DataDir = None,
    max_eval: Annotated[Optional[int], typer.Option(help="Evaluate at most N examples per split (see --subset).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --max-eval subset and of the bootstrap resamples.")] = 0,
    subset: Annotated[str, typer.Option(help="Which --max-eval examples: random (seeded subset) or first (the first rows, as lm-eval's --limit).")] = "random",
    out: Annotated[Optional[Path], typer.Option(help="Write results JSON here (and <stem>.examples.jsonl beside it).")] = None,
    examples_out: Annotated[Optional[Path], typer.Option(help="Per-example JSONL path (default: beside --out).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write a self-contained HTML report with plots here.")] = None,
    head: Annotated[Optional[list[str]], typer.Option(help="Evaluate only these heads of the folder (repeat).")] = None,
    variant: Annotated[Optional[str], typer.Option("--template", "--variant", help="Template family: paper (PAPER.md section 6), paper_fixed, reference, or lm-eval (lm-evaluation-harness prompts; the harness's own scoring is added as lm-eval:acc / acc_norm / mean). Default: the one the heads were trained on, else paper.")] = None,
    lm_eval_baseline: Annotated[bool, typer.Option(help="Also score each task the harness defines exactly as lm-evaluation-harness does, on the same rows, so heads are compared with the stronger log-prob baseline.")] = True,
    bootstrap: Annotated[int, typer.Option(min=0, help="Resamples of the paired bootstrap behind each head's 95% interval of its margin over the baseline (0: no intervals).")] = 1000,
    skip_missing: Annotated[bool, typer.Option(help="Skip tasks whose data files are missing or that have no such template, e.g. STS-B under lm-eval (aggregates are then marked partial).")] = False,
    allow_base_mismatch: Mismatch = False,
    load_in_4bit: Load4 = None,
    load_in_8bit: Load8 = None,
    compare: Annotated[bool, typer.Option("--compare", help="Compare results files given as arguments instead of evaluating.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Evaluate log-prob scoring and DPH heads on tasks (one backbone pass per task), or --compare results."""
    from prefheads.eval import evaluate
    from prefheads.eval.report import comparison_table, load_results, margin_note, run_labels, save_run, write_report

    if compare:
        if not files:
            raise typer.BadParameter("give the results files to compare: prefheads eval --compare a.json b.json")
        try:
            results = [load_results(f) for f in files]
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        console().print(comparison_table(results, run_labels(files), title="prefheads eval --compare"))
        return
    if files:
        raise typer.BadParameter(f"unexpected arguments {[str(f) for f in files]} (did you mean --compare?)")
    if not task:
        raise typer.BadParameter("--task is required (e.g. --task glue, --task glue/rte,boolq)")
    if examples_out is not None and out is None:
        raise typer.BadParameter("--examples-out is written beside the results: give --out too")
    if heads is not None:
        pm = load_heads(heads, base, allow_base_mismatch, names=head, load_in_4bit=load_in_4bit,
                        load_in_8bit=load_in_8bit)
    else:
        if head:
            raise typer.BadParameter("--head needs --heads")
        pm = load_base(base, load_in_4bit, load_in_8bit)
    try:
        run = evaluate(pm, task, data_dir=data_dir, max_eval=max_eval, seed=seed, heads=head, heads_dir=heads,
                       variant=variant, lm_eval_baseline=lm_eval_baseline, subset=subset, skip_missing=skip_missing,
                       bootstrap=bootstrap, progress=progress)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}\n(pass --skip-missing to evaluate the tasks whose data is there)", err=True)
        raise typer.Exit(2) from None
    except (ValueError, KeyError) as e:  # unknown task, template or subset: the message says which
        # a KeyError's str() is the repr of its message: unquote that, and only that
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    res = run.results
    console().print(comparison_table([res], title=f"{res['model']['id']}: {', '.join(res['tasks'])}"))
    if res["tasks"]:
        typer.echo(margin_note(res))
    for name, t in res["tasks"].items():
        if t.get("baseline"):
            typer.echo(f"{name}: baseline to beat {t['baseline']['method']} {100 * t['baseline']['score']:.1f}")
        if "similar_length" in t:
            sl = t["similar_length"]
            typer.echo(f"{name}: {sl['n']} of {t['n']} pairs have replies of similar length (within "
                       f"{100 * sl['tolerance']:.0f}% of the longer, in {sl['unit']}); a head that only "
                       "learned length is at chance on them")
    for name, why in res["missing"].items():
        typer.echo(f"skipped {name}: {why}", err=True)
    if out is not None:
        typer.echo(f"results: {save_run(run, out, examples_out)}")
    if report is not None:
        typer.echo(f"report: {write_report(res, run.records, report)}")


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the CLI."""
    app.command(name="eval")(eval_command)
