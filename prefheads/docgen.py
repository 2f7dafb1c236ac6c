"""Generate docs/cli.md from the typer app: ``python -m prefheads.docgen > docs/cli.md``.

Options built from a config dataclass show only their first sentence in ``--help``; the
reference gives each one's whole text (the command's ``option_docs``).
"""

from __future__ import annotations

import click  # typer builds its commands on click-compatible objects
import typer.main


def _type_name(p: object, ctx: object) -> str:
    if hasattr(p, "display_type"):  # typer >= 0.2x
        return p.display_type(ctx).strip("<>")
    return getattr(getattr(p, "type", None), "name", "")


def cli_markdown() -> str:
    """Markdown reference of every ``prefheads`` command and option."""
    from prefheads.cli import app

    group = typer.main.get_command(app)
    lines = ["# CLI reference", "", "Generated from the app by `python -m prefheads.docgen`; "
             "`prefheads <command> --help` prints the same.", ""]
    ctx = click.Context(group, info_name="prefheads")
    lines += ["Options of `prefheads` itself, given before the command:", ""]
    for p in group.params:
        if getattr(p, "param_type_name", "") == "option" and p.name != "help":
            metavar = f" {p.metavar}" if getattr(p, "metavar", None) else ""
            lines.append(f"- `prefheads {' / '.join(p.opts)}{metavar} <command> ...`: {(p.help or '').strip()}")
    lines += ["", "Without `--debug` an error prints one line, `error: ...`, and exits with status 1 (2 for a usage error or an unknown task, template, family or recipe).", ""]
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        sub = click.Context(cmd, info_name=name, parent=ctx)
        full = getattr(cmd.callback, "option_docs", {})
        lines += [f"## `prefheads {name}`", "", (cmd.help or "").strip(), "",
                  "| option | type | default | help |", "|---|---|---|---|"]
        for p in cmd.params:
            if getattr(p, "param_type_name", "") != "option" or p.name == "help":
                continue
            opts = " / ".join(p.opts + p.secondary_opts)
            default = "" if p.default in (None, ()) or p.required else repr(p.default)
            kind = "flag" if getattr(p, "is_flag", False) else _type_name(p, sub)
            lines.append(f"| `{opts}` | {kind} | {'required' if p.required else default} | "
                         f"{(full.get(p.name) or p.help or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(cli_markdown())
