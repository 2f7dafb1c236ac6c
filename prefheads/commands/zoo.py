"""``prefheads zoo`` (model-family profiles, head cards) and ``prefheads tasks`` (the task registry).

* ``prefheads zoo`` — every family profile of ``zoo/families/*.yaml`` and the head cards of
  ``zoo/heads/*.md``; ``prefheads zoo show <family>`` — one profile.
* ``prefheads tasks`` — every task with its group, splits, sources and (with local data) sizes;
  ``prefheads tasks show <task>`` — one task's definition, files, and a rendered example exactly
  as the model sees it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prefheads.commands._common import DataDir


def _console() -> Any:
    from rich.console import Console

    return Console(width=160)


# ----------------------------------------------------------------------------- zoo
def head_cards() -> list[tuple[str, str, Path]]:
    """``(name, title, path)`` of every head card in ``zoo/heads``."""
    from prefheads.families import ZOO_DIR

    out = []
    for p in sorted((ZOO_DIR.parent / "heads").glob("*.md")):
        title = next((ln.lstrip("# ").strip() for ln in p.read_text().splitlines() if ln.startswith("# ")), p.stem)
        out.append((p.stem, title, p))
    return out


def profile_text(name: str) -> str:
    """One family profile as ``key: value`` lines.

    Raises:
        KeyError: For an unknown family (the message lists the known ones).
    """
    from prefheads.families import ZOO_DIR, profiles

    prof = profiles().get(name)
    if prof is None:
        raise KeyError(f"unknown model family {name!r}; known families: {', '.join(sorted(profiles()))}")
    rows = [("model_type", prof.model_type), ("description", prof.description), ("layers", prof.layers),
            ("final_norm", prof.final_norm + (" (may be absent: -1 is then the last block)"
                                               if prof.final_norm_optional else "")),
            *([("output_proj", prof.output_proj)] if prof.output_proj else []),
            ("end_of_turn", prof.end_of_turn or "(from the chat template)"),
            ("lora_targets", ", ".join(prof.lora_targets) or "(none)"),
            ("file", str(ZOO_DIR / f"{prof.model_type}.yaml"))]
    return "\n".join(f"{k + ':':14} {v}" for k, v in rows)


def _zoo_app() -> typer.Typer:
    zoo = typer.Typer(help="Model-family profiles (where heads attach) and head cards.", no_args_is_help=False)

    @zoo.callback(invoke_without_command=True)
    def listing(ctx: typer.Context) -> None:
        """List every family profile and head card."""
        if ctx.invoked_subcommand is not None:
            return
        from rich.table import Table

        from prefheads.families import profiles

        t = Table(title="Model families (zoo/families)")
        # module paths are read and copied whole: their columns are as wide as the longest path
        paths = {"layers": [p.layers for p in profiles().values()],
                 "final norm": [p.final_norm for p in profiles().values()]}
        for col in ("model_type", "layers", "final norm", "end of turn", "LoRA targets", "description"):
            t.add_column(col, overflow="fold", min_width=max(map(len, paths.get(col, [""]))) or None)
        for p in profiles().values():
            t.add_row(p.model_type, p.layers, p.final_norm, p.end_of_turn or "(template)",
                      ", ".join(p.lora_targets), p.description)
        con = _console()
        con.print(t)
        cards = head_cards()
        if cards:
            h = Table(title="Head cards (zoo/heads)")
            h.add_column("card")
            h.add_column("title", overflow="fold")
            for name, title, _ in cards:
                h.add_row(name, title)
            con.print(h)
        con.print("Unknown model types fall back to a structural search (with a warning); "
                  "`prefheads zoo show <family>` prints one profile.")

    @zoo.command("show")
    def show(family: Annotated[str, typer.Argument(help="model_type of the family (llama, qwen2, ...) or a head card.")]) -> None:
        """Print one family profile (or a head card)."""
        cards = {n: p for n, _, p in head_cards()}
        try:
            typer.echo(profile_text(family))
        except KeyError as e:
            if family in cards:
                typer.echo(cards[family].read_text(), nl=False)
                return
            typer.echo(f"error: {e.args[0] if e.args else e}", err=True)
            raise typer.Exit(2) from None

    return zoo


# ----------------------------------------------------------------------------- tasks
def split_sizes(name: str, data_dir: str | None) -> dict[str, int | str]:
    """Rows per split available under ``data_dir`` (``"missing"`` where its files are absent)."""
    from prefheads import tasks

    spec = tasks.get_task(name)
    out: dict[str, int | str] = {}
    for split, paths in tasks.data_files(name, data_dir).items():
        if not all(p.exists() for p in paths):
            out[split] = "missing"
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load = tasks.load_pairs if spec.kind == "pairs" else tasks.load_examples
            out[split] = len(load(name, split=split, data_dir=data_dir, skip_bad=True))
    return out


def _sources(d: dict[str, Any]) -> str:
    parts = [f"hub {d['hub']}"] if d["hub"] else []
    if d["bundled"]:
        parts.append("bundled slice")
    return ", ".join(parts) or "local only"


def example_text(name: str, data_dir: str | None, split: str, index: int, tokenizer: Any = None) -> str:
    """Example ``index`` of ``split`` rendered as the model sees it, plus its correct full sequence."""
    from prefheads import tasks
    from prefheads.types import Example

    spec = tasks.get_task(name)
    load = tasks.load_pairs if spec.kind == "pairs" else tasks.load_examples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = load(name, split=split, data_dir=data_dir, limit=index + 1)
    if len(rows) <= index:
        raise IndexError(f"{name} [{split}] has only {len(rows)} rows")
    item = rows[index]
    text = tasks.render(item, tokenizer)
    target = (item.choices[item.label] if isinstance(item, Example) and item.label is not None else
              getattr(item, "chosen", None))
    if target is not None:
        msgs = item.prompt + [{"role": "assistant", "content": target}]
        full = (tokenizer.apply_chat_template(msgs, tokenize=False) if tokenizer is not None
                and getattr(tokenizer, "chat_template", None) else tasks.chatml(msgs))
        text += "\n## full sequence of the preferred candidate (the reward is read at its last <|im_end|>)\n" + full
    return text


def _tasks_app() -> typer.Typer:
    app = typer.Typer(help="The task registry: benchmarks and preference datasets.", no_args_is_help=False)

    @app.callback(invoke_without_command=True)
    def listing(
        ctx: typer.Context,
        data_dir: DataDir = None,
        sizes: Annotated[bool, typer.Option(help="Count rows of the local files (reads them).")] = True,
    ) -> None:
        """List every task: group, kind, splits, sources and local sizes."""
        if ctx.invoked_subcommand is not None:
            return
        from rich.table import Table

        from prefheads import tasks
        from prefheads.tasks import resolve_data_dir

        root = resolve_data_dir(data_dir)
        t = Table(title=f"Tasks (data: {root if root else 'hub; pass --data-dir for local sizes'})")
        for col in ("task", "group", "kind", "train", "eval", "metrics", "sources", "local rows"):
            t.add_column(col, overflow="fold")
        for name in tasks.list_tasks():
            d = tasks.describe(name)
            local = ""
            if root is not None and sizes:
                local = " ".join(f"{s}:{n}" for s, n in split_sizes(name, data_dir).items()) or "–"
            t.add_row(name, d["group"] or "", d["kind"], d["train_split"] or "–", ", ".join(d["eval_splits"]),
                      ", ".join(d["metrics"]), _sources(d), local)
        _console().print(t)
        typer.echo("Groups: " + ", ".join(f"{g} ({len(tasks.expand(g))})" for g in tasks.list_groups())
                   + ". `prefheads tasks show <task>` prints one task with an example.")

    @app.command("show")
    def show(
        task: Annotated[str, typer.Argument(help="Task name (glue/rte, openbookqa, ...).")],
        data_dir: DataDir = None,
        split: Annotated[Optional[str], typer.Option(help="Split of the example (default: the first eval split).")] = None,
        index: Annotated[int, typer.Option(help="Row of the example.")] = 0,
        base: Annotated[Optional[str], typer.Option(
            help="Render with this model's tokenizer chat template (hub id / folder) instead of plain ChatML.")] = None,
    ) -> None:
        """Print one task's definition, files and sizes, and an example as the model sees it."""
        from prefheads import tasks

        try:
            spec = tasks.get_task(task)
        except KeyError as e:
            typer.echo(f"error: {e.args[0] if e.args else e}", err=True)
            raise typer.Exit(2) from None
        d = tasks.describe(spec.name)
        lines = [f"# {spec.name} — {d['description']}", f"group: {d['group'] or '–'}    kind: {d['kind']}    "
                 f"metrics: {', '.join(d['metrics'])}", f"train split: {d['train_split'] or '–'}    "
                 f"eval split(s): {', '.join(d['eval_splits'])}", f"sources: {_sources(d)}"
                 + (f" @ {d['revision'] or 'default branch (unpinned)'}" if d["hub"] else ""),
                 f"system prompt: {spec.system_id or '–'}", f"definition: {spec.source_file}"]
        files = tasks.data_files(spec.name, data_dir)
        sizes = split_sizes(spec.name, data_dir) if files else {}
        for s, paths in files.items():
            n = sizes.get(s)
            lines.append(f"  {s}: " + ("files missing (hub only here)" if n == "missing" else f"{n} rows")
                         + "  " + " ".join(str(p) for p in paths))
        if not files:
            lines.append("  (no local data dir: pass --data-dir, set $PREFHEADS_DATA, or the hub is used)")
        typer.echo("\n".join(lines) + "\n")
        tok = None
        if base is not None:
            from transformers import AutoTokenizer

            from prefheads.loading import resolve_base

            tok = AutoTokenizer.from_pretrained(resolve_base(base)[0])
        split = split or spec.eval_splits[0]
        try:
            typer.echo(example_text(spec.name, data_dir, split, index, tok))
        except Exception as e:  # noqa: BLE001 - show why no example, keep the definition printed
            typer.echo(f"(no example of split {split!r}: {e})", err=True)
            raise typer.Exit(1) from None

    return app


def register(app: typer.Typer) -> None:
    """Add ``zoo`` and ``tasks`` to ``app``."""
    app.add_typer(_zoo_app(), name="zoo")
    app.add_typer(_tasks_app(), name="tasks")
