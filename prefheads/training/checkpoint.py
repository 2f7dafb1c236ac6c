"""Atomic, safetensors-only training checkpoints (no pickle).

A checkpoint folder holds ``state.safetensors`` (trainable weights, optimizer tensors, RNG
states, the best weights so far) and ``state.json`` (optimizer/scheduler scaffolding, the data
position, the history). It is written to a sibling temporary folder and swapped in, so a crash
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scaffold = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        scaffold["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                scaffold["state"][str(pid)][k] = {"tensor": f"opt.{pid}.{k}"}
            else:
                scaffold["state"][str(pid)][k] = {"value": v}
    return tensors, scaffold


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scaffold: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for pid, st in scaffold["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in st.items()}
    return {"state": state, "param_groups": scaffold["param_groups"]}


def _temp_prefix(directory: Path) -> str:
    return f".{directory.name}.tmp-"


def remove_stale(directory: Path) -> list[str]:
    """Delete the temporary folders a run killed while writing a checkpoint to ``directory`` left.

    ``directory`` itself and its ``.old`` predecessor (:func:`find_checkpoint`) are kept.

    Returns:
        The names removed.
    """
    directory = Path(directory)
    if not directory.parent.is_dir():
        return []
    stale = [p for p in directory.parent.iterdir()
             if p.name.startswith(_temp_prefix(directory)) and p.is_dir() and not p.is_symlink()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in stale)


def save_checkpoint(directory: Path, *, weights: dict[str, torch.Tensor], best: dict[str, torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer, scheduler: Any, info: dict[str, Any]) -> None:
    """Write a checkpoint to ``directory`` atomically (swap of a complete temporary folder)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    opt_t, opt_s = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"w.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in (best or {}).items()})
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    sched = scheduler.state_dict()  # LambdaLR: plain numbers (lr_lambdas of functions are None)
    meta = {"optimizer": opt_s, "scheduler": sched, "has_best": best is not None, **info}
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=_temp_prefix(directory)))
    try:
        save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": "pt"})
        (tmp / "state.json").write_text(json.dumps(meta))
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_checkpoint(directory: Path) -> Path | None:
    """The checkpoint to resume from (the previous one if a swap was interrupted), or None."""
    for cand in (Path(directory), Path(directory).with_name(Path(directory).name + ".old")):
        if (cand / "state.json").is_file() and (cand / "state.safetensors").is_file():
            return cand
    return None


def checkpoint_info(directory: Path) -> dict[str, Any] | None:
    """What the checkpoint :func:`find_checkpoint` picks records of the run (its ``info``), or None."""
    found = find_checkpoint(directory)
    if found is None:
        return None
    meta = json.loads((found / "state.json").read_text())
    return {k: v for k, v in meta.items() if k not in ("optimizer", "scheduler", "has_best")}


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Restore optimizer, scheduler and RNG; return (weights, best weights or None, info)."""
    tensors = load_file(str(Path(directory) / "state.safetensors"))
    meta = json.loads((Path(directory) / "state.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta.pop("optimizer")))
    scheduler.load_state_dict(meta.pop("scheduler"))
    torch.set_rng_state(tensors["rng.torch"])
    weights = {k[2:]: v for k, v in tensors.items() if k.startswith("w.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} if meta.pop("has_best") else None
    return weights, best, meta


def recorded_choices(out: Path) -> dict[str, Any] | None:
    """The data choices (``info["record"]``) that the checkpoint a resumed run in ``out``
    continues recorded; None without one (``--layer auto`` runs keep one per layer)."""
    for folder in [out / "checkpoint", *sorted(out.glob("layers/*/checkpoint"))]:
        info = checkpoint_info(folder)
        if info is not None and "record" in info:
            return info["record"]
    return None


def cut_metrics(out: Path) -> None:
    """Cut ``out/metrics.jsonl`` back to the step records the checkpoint a resumed run starts from
    accounts for (none without a checkpoint): the steps run after it are run, and logged, again."""
    info = checkpoint_info(out / "checkpoint")
    keep = 0 if info is None else info.get("records")
    path = out / "metrics.jsonl"
    if keep is None or not path.is_file():  # a checkpoint of an earlier version: as it was
        return
    from prefheads.headio import atomic_write

    with path.open("rb") as f:
        lines = [f.readline() for _ in range(keep)]
    atomic_write(path, b"".join(lines))  # a kill mid-cut leaves the records as they were
