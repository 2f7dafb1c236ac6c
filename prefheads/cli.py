"""The ``prefheads`` command line: a thin typer layer over functions a notebook can call."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Direct Preference Heads for any Hugging Face causal LM.")

Base = Annotated[Optional[str], typer.Option(help="Hub id, local folder or GGUF file (default: bundled SmolLM2-135M-Instruct).")]


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


@app.command()
def fit(
    base: Base = None,
    task: Annotated[Optional[str], typer.Option(help="Task or group, e.g. glue/rte, openbookqa.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="JSONL of prompt/chosen/rejected pairs.")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Local dataset copies (default $PREFHEADS_DATA, else the hub).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder of the head set.")] = Path("runs/heads"),
    head_name: Annotated[Optional[str], typer.Option(help="Head name (default: the task).")] = None,
    pooler: Annotated[str, typer.Option(help="identity | bert | swiglu | a registered pooler.")] = "swiglu",
    layer: Annotated[int, typer.Option(help="-1: after the final norm; i: output of block i.")] = -1,
    objective: Annotated[str, typer.Option(help="separable | contrastive.")] = "separable",
    dph_eps: Annotated[float, typer.Option(help="Label smoothing of the DPH loss.")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Epochs over the training pairs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    max_train: Annotated[Optional[int], typer.Option(help="Cap on training examples (seeded subset).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of the base.")] = None,
) -> None:
    """Train a reward head on a frozen backbone and save it."""
    _quiet()
    from prefheads.training import FitConfig
    from prefheads.training import fit as run_fit

    cfg = FitConfig(base=base, revision=revision, task=task, data=str(data) if data else None,
                    data_dir=data_dir, out=str(out), head_name=head_name, pooler=pooler, layer=layer,
                    objective=objective, dph_eps=dph_eps, epochs=epochs, batch_size=batch_size, lr=lr,
                    seed=seed, max_train=max_train)
    res = run_fit(cfg)
    best = res.history[res.best_epoch - 1]
    typer.echo(f"head {res.head_name!r} saved to {res.out} (best epoch {res.best_epoch}: "
               f"val pair accuracy {best['val_pair_accuracy']:.3f}; train {res.n_train}, val {res.n_val}; "
               f"backbone {res.feature_seconds:.1f}s, head {res.train_seconds:.1f}s)")


@app.command()
def score(
    heads: Annotated[Path, typer.Option(help="Head folder.")],
    prompt: Annotated[str, typer.Option(help="User prompt.")],
    candidate: Annotated[list[str], typer.Option(help="A candidate answer (repeat the option).")],
    base: Base = None,
    head: Annotated[Optional[str], typer.Option(help="Head to use (default: the folder's active head).")] = None,
    allow_base_mismatch: Annotated[bool, typer.Option(help="Load heads trained on another base.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print each candidate's reward, best first."""
    _quiet()
    from prefheads.headio import read_config
    from prefheads.model import PreferenceModel

    if base is None:
        base_id = read_config(heads)["base"]["model_id"]
        from prefheads.loading import BUNDLED_NAME

        base = None if base_id == BUNDLED_NAME else base_id
    pm = PreferenceModel.from_pretrained(base)
    pm.load_heads(heads, allow_base_mismatch=allow_base_mismatch)
    rewards = pm.score(prompt, candidate, head=head).tolist()
    ranked = sorted(zip(candidate, rewards), key=lambda x: -x[1])
    if as_json:
        typer.echo(json.dumps([{"candidate": c, "reward": r} for c, r in ranked]))
        return
    for i, (c, r) in enumerate(ranked, 1):
        typer.echo(f"{i}. {r:+.4f}  {c}")


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


def main() -> None:  # pragma: no cover
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
