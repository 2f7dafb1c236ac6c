"""Configs of the frozen-head recipes: how a head trains (:class:`HeadSpec`), the probes
(paper Table 6) and the task-specific heads (paper Table 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefheads.recipes.config import EvalSource, RecipeBase, TaskSource
from prefheads.training.config import FitConfig, fit_options

TEMPLATES = ("paper", "paper_fixed", "reference", "lm-eval")
"""Template families a head may train on (:func:`prefheads.tasks.get_task`'s variants)."""


_HeadOptions = fit_options(
    "HeadOptions", ("pooler", "objective", "dph_eps", "epochs", "batch_size", "lr", "weight_decay", "warmup_ratio",
                    "final_lr_ratio", "val_fraction", "layer", "cache_dtype", "lm_score", "solver", "raw_view",
                    "cv_folds", "template"),
    pooler="swiglu", objective="separable", layer=-1, lm_score="none", template="paper")


@dataclass
class HeadSpec(_HeadOptions):
    """How each head is trained on the frozen backbone's cached features (``fit`` mode ``frozen``).

    Its fields are :class:`~prefheads.training.FitConfig`'s (``pooler``, ``objective``, ``dph_eps``,
    ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_ratio``, ``final_lr_ratio``,
    ``val_fraction``, ``layer``, ``cache_dtype``, ``lm_score``, ``solver``, ``raw_view``,
    ``cv_folds``, ``template``), defaulting to the paper's head: a SwiGLU pooler read after the
    final norm, the separable loss, no LM score, the paper's templates. ``prefheads fit``'s default
    head is ``{pooler: identity, objective: null, layer: auto, lm_score: auto, template: null}``:
    the ridge solver with the LM's own scores, on lm-evaluation-harness's template where every task
    of the head has one (``template: null``), else the paper's. A benchmark is scored with the
    template its head was trained on where the task has it, else the paper's.
    """

    def __post_init__(self) -> None:
        self.fit_config(task="check")
        if self.template is not None and self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {list(TEMPLATES)} or null (fit's default), got {self.template!r}")

    def resolved_template(self, sources: list[TaskSource]) -> str:
        """The template a head of this spec trains ``sources`` on: ``template``, or for null fit's
        default (``lm-eval`` where every task of the mix has it, else ``paper``).

        Raises:
            ValueError: A task of the mix has no such template (naming it and ``head.template``).
        """
        from prefheads import tasks
        from prefheads.recipes.data import expand
        from prefheads.training.config import default_template

        names = [s.task for s in expand(sources)]
        if self.template is None:
            return "lm-eval" if all(default_template(n) == "lm-eval" for n in names) else "paper"
        for n in names:
            try:
                tasks.get_task(n, self.template)
            except ValueError as e:
                raise ValueError(f"head.template: {e}") from None
        return self.template

    def fit_config(self, **kw: Any) -> FitConfig:
        """The :class:`~prefheads.training.FitConfig` of one head."""
        return FitConfig(**{**self.fit_options(), "mode": "frozen", "feature_cache": True, **kw})


@dataclass
class ProbesRecipe(RecipeBase):
    """Frozen-backbone probes (paper Table 6): one head per model, log-prob vs DPH per benchmark.

    Attributes:
        models: Backbones (hub ids, folders, GGUF files; null = the bundled SmolLM2).
        dtype: Backbone weight dtype (``float32``, ``bfloat16``, ``float16``).
        head_name: Name of each model's head (the DPH column).
        head: Head training settings.
        train: Training mix of every head.
        eval: Benchmarks (groups are reported as GLUE / GPT4All / RACE scores).
        per_task: One head per training task (``<head_name>-<task>``, each fitted and validated on
            its own task's rows alone), and each benchmark scored by its own task's head; every
            benchmark task then needs training rows. False: one head on the whole mix (the paper's
            Table 6 probe).
        glue_wnli: Count WNLI in the GLUE score.
        max_length: Longest sequence (tokens); longer prompts lose their oldest tokens.
    """

    recipe: str = "probes"
    models: list[str | None] = field(default_factory=lambda: [None])
    dtype: str = "float32"
    head_name: str = "dph"
    head: HeadSpec = field(default_factory=HeadSpec)
    train: list[TaskSource] = field(default_factory=list)
    eval: list[EvalSource] = field(default_factory=list)
    per_task: bool = False
    glue_wnli: bool = False
    max_length: int | None = None

    def __post_init__(self) -> None:
        if not self.models or not self.train or not self.eval:
            raise ValueError("models, train and eval must be non-empty")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.per_task:
            from prefheads.recipes.data import expand

            trained = {s.task for s in expand(self.train)}
            missing = [s.task for s in expand(self.eval) if s.task not in trained]
            if missing:
                raise ValueError(f"per_task: benchmark tasks {missing} have no training source (each is scored "
                                 "by its own task's head; a group trains without its excluded members, e.g. "
                                 "GLUE without WNLI: list the benchmarks by task)")
            for s in self.train:
                self.head.resolved_template([s])
        else:
            self.head.resolved_template(self.train)


@dataclass
class TaskHeadsRecipe(RecipeBase):
    """Task-specific heads on one frozen backbone (paper Table 5): heads × benchmarks.

    Attributes:
        base: The (trained) backbone: hub id, folder, GGUF; null = the bundled SmolLM2.
        base_heads: Optional head folder whose heads join the table (e.g. the pipeline's
            general head in ``<out>/align``).
        dtype: Backbone weight dtype.
        heads: Head name → its training mix (one head per task group).
        head: Head training settings.
        eval: Benchmarks (columns of the table).
        glue_wnli: Count WNLI in the GLUE score.
        max_length: Longest sequence (tokens).
    """

    recipe: str = "task_heads"
    base: str | None = None
    base_heads: str | None = None
    dtype: str = "float32"
    heads: dict[str, list[TaskSource]] = field(default_factory=dict)
    head: HeadSpec = field(default_factory=HeadSpec)
    eval: list[EvalSource] = field(default_factory=list)
    glue_wnli: bool = False
    max_length: int | None = None

    def __post_init__(self) -> None:
        if not self.heads or not self.eval:
            raise ValueError("heads and eval must be non-empty")
        empty = [k for k, v in self.heads.items() if not v]
        if empty:
            raise ValueError(f"heads {empty} have no training data")
        found = {k: self.head.resolved_template(v) for k, v in self.heads.items()}
        if len(set(found.values())) > 1:
            raise ValueError(f"head.template: the heads would train on different templates ({found}) and are "
                             "scored together: set head.template (e.g. paper)")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
