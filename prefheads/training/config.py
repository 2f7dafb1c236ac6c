"""``FitConfig``: every option of ``prefheads fit``, one dataclass (the CLI mirrors it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class FitConfig:
    """Options of a training run. Field docs are the CLI help.

    Attributes:
        base: Backbone: hub id, folder, GGUF file; None = bundled SmolLM2-135M-Instruct.
        revision: Hub revision of the backbone.
        task: Task or group name (``glue/rte``, ``openbookqa``...), or None with ``data``.
        data: A JSONL file of ``{"prompt", "chosen", "rejected"}`` preference pairs.
        data_dir: Folder of local dataset copies (default: $PREFHEADS_DATA, else the hub).
        out: Output folder of the head set.
        head_name: Name of the trained head (default: the task name, or "default").
        pooler: Registered pooler (identity, bert, swiglu, ...).
        layer: Hidden state read: -1 = after the final norm, i = output of block i.
        objective: DPH loss: separable or contrastive.
        dph_eps: Label smoothing ε of the DPH loss.
        epochs: Passes over the training pairs.
        batch_size: Pairs per optimizer step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay of the head.
        warmup_ratio: Fraction of steps of linear warmup before cosine decay.
        final_lr_ratio: Cosine decays to lr · final_lr_ratio.
        clip: Gradient-norm clip.
        dropout: Pooler-output dropout (None: 0.1, but 0 for a frozen backbone).
        seed: Seed of sampling, initialisation and shuffling.
        max_train: Cap on training examples (seeded subset).
        max_eval: Cap on evaluation examples (seeded subset).
        val_fraction: Share of training examples carved out for validation (best epoch kept).
        mode: Training mode: frozen (head only).
        shared_prefix: Encode each prompt once for all its candidates.
    """

    base: str | None = None
    revision: str | None = None
    task: str | None = None
    data: str | None = None
    data_dir: str | None = None
    out: str = "runs/heads"
    head_name: str | None = None
    pooler: str = "swiglu"
    layer: int = -1
    objective: str = "separable"
    dph_eps: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    final_lr_ratio: float = 0.1
    clip: float = 1.0
    dropout: float | None = None
    seed: int = 0
    max_train: int | None = None
    max_eval: int | None = None
    val_fraction: float = 0.1
    mode: str = "frozen"
    shared_prefix: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task is None and self.data is None:
            raise ValueError("give a task (--task) or a preference file (--data)")
        if self.mode not in ("frozen",):
            raise ValueError(f"mode {self.mode!r} is not available; choose frozen")
        if self.objective not in ("separable", "contrastive"):
            raise ValueError(f"objective must be separable or contrastive, got {self.objective!r}")
        if not 0.0 <= self.dph_eps <= 0.5:
            raise ValueError(f"dph_eps must be in [0, 0.5], got {self.dph_eps}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def head_dropout(self) -> float:
        """Dropout actually used: 0 on a frozen backbone unless set."""
        if self.dropout is not None:
            return self.dropout
        return 0.0 if self.mode == "frozen" else 0.1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        """Pretty JSON."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        """From a dict; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown fit option(s) {unknown}; known: {sorted(names)}")
        return cls(**d)
