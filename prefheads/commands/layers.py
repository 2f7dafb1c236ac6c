"""``prefheads layers``: which layer holds what a reward head needs, and how good is it?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from prefheads.commands._common import DataDir

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel
    from prefheads.training.data import Candidates


def logprob_accuracy(pm: PreferenceModel, cands: Candidates) -> float:
    """Choice accuracy of mean log-prob scoring over candidate groups (ties count wrong)."""
    f = pm.features(cands.prompts, cands.completions, logprobs=True)
    mean = (f.logprob_sum / f.n_tokens.clamp_min(1)).tolist()
    ok = sum(int(mean[w] > max(mean[l] for l in ls)) for w, ls in cands.groups)
    return ok / max(1, len(cands.groups))


def plot_layers(scores: dict[int, float], reference: float, path: Path, title: str) -> Path | None:
    """Line plot of validation accuracy per layer with log-prob as a horizontal line (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        typer.echo("matplotlib is not installed (pip install 'prefheads[plots]'): no plot written", err=True)
        return None
    order = sorted(scores, key=lambda l: 10**9 if l == -1 else l)
    xs = list(range(len(order)))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(xs, [100 * scores[l] for l in order], marker="o", label="DPH head (validation)")
    ax.axhline(100 * reference, color="gray", linestyle="--", label="log-prob (validation)")
    ax.set_xticks(xs, ["final" if l == -1 else str(l) for l in order], fontsize=7)
    ax.set_xlabel("layer (block output; final = after the final norm)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_layers(task: str, base: str | None, data_dir: str | None, layers: str, pooler: str, max_train: int | None,
               epochs: int, out: Path, seed: int, overwrite: bool = False) -> dict[str, Any]:
    """Train a head per layer on one backbone pass, report validation accuracy per layer."""
    from prefheads.model import PreferenceModel
    from prefheads.training import FitConfig, fit
    from prefheads.training.budget import budget_share
    from prefheads.training.data import prompt_keys, split
    from prefheads.training.fit import training_candidates

    # one pure-DPH head per layer in the training loop, each scored on the same validation split
    cfg = FitConfig(base=base, task=task, data_dir=data_dir, layer="auto", layers=layers, pooler=pooler,
                    max_train=max_train, epochs=epochs, out=str(out), seed=seed, solver="adamw", lm_score="none",
                    overwrite=overwrite)
    pm = PreferenceModel.from_pretrained(base)
    cands = training_candidates(cfg)
    res = fit(cfg, pm=pm, cands=cands)
    # the questions the heads were validated on: those of the share a time budget kept, if it cut
    cands = budget_share(cfg, cands, [None] * len(cands.completions), res.data)[0]
    _, va = split(len(cands), cfg.val_fraction, cfg.seed, keys=prompt_keys(cands))
    if len(va) != res.n_val:
        raise RuntimeError(f"the log-prob reference would score {len(va)} validation questions, the heads {res.n_val}")
    ref = logprob_accuracy(pm, cands.subset(va))
    scores = {int(k): v for k, v in json.loads((out / "layer_scores.json").read_text())["val_accuracy"].items()}
    report = {"task": task, "model": pm.model_id, "pooler": pooler, "n_train": res.n_train, "n_val": res.n_val,
              "chosen_layer": pm.heads[res.head_name].config.layer, "val_accuracy": scores,
              "logprob_val_accuracy": ref, "seconds": res.setup_seconds + res.train_seconds}
    (out / "layers.json").write_text(json.dumps(report, indent=2))
    plot_layers(scores, ref, out / "layers.png", f"{task}: validation accuracy per layer ({pm.model_id})")
    return report


def register(app: typer.Typer) -> None:
    """Add ``layers`` to the CLI."""

    @app.command()
    def layers(
        task: Annotated[str, typer.Option(help="Task, e.g. glue/sst2.")],
        base: Annotated[Optional[str], typer.Option(help="Hub id, folder or GGUF (default: bundled SmolLM2).")] = None,
        data_dir: DataDir = None,
        layer_spec: Annotated[str, typer.Option("--layers", help="all | 0,5,10 | 10:20 (-1 = final norm).")] = "all",
        pooler: Annotated[str, typer.Option(help="Pooler of the per-layer heads.")] = "identity",
        max_train: Annotated[Optional[int], typer.Option(help="Cap on training examples (seeded).")] = None,
        epochs: Annotated[int, typer.Option(help="Epochs per layer head.")] = 10,
        out: Annotated[Path, typer.Option(help="Output folder (head, layers.json, layers.png).")] = Path("runs/layers"),
        seed: Annotated[int, typer.Option(help="Seed.")] = 0,
        overwrite: Annotated[bool, typer.Option(help="Replace what an earlier run with other options left in --out.")] = False,
    ) -> None:
        """Validation accuracy of a DPH head at every layer (one backbone pass), vs log-prob; PNG + JSON."""
        from rich.console import Console
        from rich.table import Table

        rep = run_layers(task, base, data_dir, layer_spec, pooler, max_train, epochs, out, seed, overwrite)
        t = Table(title=f"{task}: validation accuracy per layer ({rep['n_val']} examples)")
        t.add_column("layer")
        t.add_column("DPH")
        for l, v in rep["val_accuracy"].items():
            mark = " *" if l == rep["chosen_layer"] else ""
            t.add_row("final" if l == -1 else str(l), f"{100 * v:.1f}%{mark}")
        t.add_row("log-prob", f"{100 * rep['logprob_val_accuracy']:.1f}%")
        Console().print(t)
        typer.echo(f"chosen layer {rep['chosen_layer']}; head, layers.json and layers.png in {out}")
