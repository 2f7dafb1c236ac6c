"""Recipe configs: one dataclass tree per recipe, validated on construction (no weights loaded).

The YAML files in ``recipes/`` are these dataclasses written out; ``recipe:`` names which one.
Field docs are the reference (``docs/recipes.md`` lists them too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prefheads.training.config import FitConfig, fit_options
from prefheads.training.sft import LMTrainConfig

CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
STAGES = ("vocab", "sft", "align")


def _check_task(task: str, split: str) -> None:
    from prefheads import tasks

    names = tasks.expand(task)  # KeyError with close-name hints for an unknown task / group
    if split in ("train", "eval"):
        return
    for n in names:
        s = tasks.get_task(n)
        known = {s.train_split, *s.eval_splits}
        for src in (s.local, s.bundled):
            if src is not None:
                known |= set(src.files)
        if split not in known:
            raise ValueError(f"task {n!r} has no split {split!r}; known: {sorted(k for k in known if k)}")


@dataclass
class TaskSource:
    """One entry of a data mix; a bare string is shorthand for ``{task: <string>}``.

    Attributes:
        task: Task or group name (``glue/sst2``, ``gpt4all``...); a group expands to its members
            (for training without the members it excludes, e.g. WNLI).
        split: ``train``, ``eval`` (the paper's evaluation split) or a concrete split name.
        limit: At most this many rows per task (a seeded random subset); null = all.
        offset: Skip the first this many rows of that seeded order. A benchmark scores the first
            ``limit`` rows of the same order, so ``offset`` ≥ the benchmark's ``limit`` trains on
            other rows of the split it scores (tasks with no local training split); the
            frozen-head recipes refuse a mix that shares rows with a benchmark. Only for a split
            that is one concrete split (not MNLI's two-part eval).
    """

    task: str
    split: str = "train"
    limit: int | None = None
    offset: int = 0

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"task": value} if isinstance(value, str) else value

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        try:
            _check_task(self.task, self.split)
        except KeyError as e:
            raise ValueError(str(e).strip("'\"")) from None


@dataclass
class EvalSource(TaskSource):
    """A benchmark entry: like :class:`TaskSource`, on the evaluation split by default.

    Attributes:
        task: Task or group name (a group means all its members, WNLI included).
        split: Always ``eval``: the paper's evaluation split(s) of the task.
        limit: At most this many examples per split (a seeded random subset); null = all.
    """

    split: str = "eval"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split != "eval":
            raise ValueError(f"benchmarks are scored on their evaluation split: split must be 'eval', got {self.split!r}")
        if self.offset:
            raise ValueError("benchmarks score the first `limit` rows of their seeded order: offset is for training sources")


@dataclass
class RecipeBase:
    """Fields every recipe has.

    Attributes:
        recipe: Which recipe runs this config (``inhouse``, ``probes``, ``task_heads``).
        out: Output folder; ``resolved_config.yaml`` is written there first.
        description: One line shown by ``prefheads run`` and in reports.
        seed: Seed of data sampling, initialisation and shuffling.
        data_dir: Folder of local dataset copies (a relative path is taken from the working
            directory); null = ``$PREFHEADS_DATA``, else the Hugging Face hub.
        threads: CPU threads torch may use (null: torch's default). One thread is fastest for
            toy models on a busy machine.
    """

    recipe: str = ""
    out: str = "runs/recipe"
    description: str = ""
    seed: int = 0
    data_dir: str | None = None
    threads: int | None = None


# ----------------------------------------------------------------------------- in-house pipeline
@dataclass
class TokenizerSpec:
    """Where the in-house model's tokenizer comes from.

    Attributes:
        source: Hub id or folder of a tokenizer (the paper: ``facebook/opt-125m``), or ``train``:
            build a byte-level BPE offline from the recipe's own training texts.
        vocab_size: Vocabulary size of a trained tokenizer (``source: train``).
        train_texts: Texts drawn from the stage data to train it on.
    """

    source: str = "facebook/opt-125m"
    vocab_size: int = 1024
    train_texts: int = 4000


@dataclass
class InHouseModelSpec:
    """The model stage 1 starts from.

    Attributes:
        base: Folder of a pretrained in-house checkpoint (with its tokenizer); null = build a
            fresh model of ``size`` (the paper's Pile pre-training is not part of this recipe).
        size: ``full`` (the 551M model, ``InHouseConfig()``) or ``tiny`` (``InHouseConfig.tiny()``).
        config: ``InHouseConfig`` field overrides (e.g. ``max_position_embeddings``).
        init_embeddings_from: Hub id or folder of a causal LM whose input embedding
            (vocab x embed_dim) initialises ours (the paper: OPT-125m); null = random.
        tokenizer: Tokenizer source.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    base: str | None = None
    size: Literal["full", "tiny"] = "full"
    config: dict[str, Any] = field(default_factory=dict)
    init_embeddings_from: str | None = None
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    device: str = "auto"


@dataclass
class VocabStage(LMTrainConfig):
    """Stage 1: add the ChatML tokens and train the embeddings only (LM loss on every token).

    Attributes:
        add_tokens: Special tokens added to the vocabulary (new rows start at the mean embedding).
        data: Training mix, rendered in ChatML with the new tokens.
    """

    train: str = "embeddings"
    loss_on: str = "all"
    lr: float = 6e-5
    add_tokens: list[str] = field(default_factory=lambda: list(CHATML_TOKENS))
    data: list[TaskSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.add_tokens:
            raise ValueError("add_tokens is empty: stage 1 exists to add the ChatML tokens")


@dataclass
class SFTStage(LMTrainConfig):
    """Stage 2: supervised fine-tuning, loss on assistant tokens, same-task packing.

    Attributes:
        data: Training mix (choice tasks give their correct answer; preference tasks their
            chosen reply).
    """

    prior: float = 0.5
    prior_exclude: list[str] = field(default_factory=lambda: ["embed_tokens"])
    data: list[TaskSource] = field(default_factory=list)


_AlignOptions = fit_options(
    "AlignOptions", ("lr", "final_lr_ratio", "clip", "prior", "prior_exclude", "dpo_weight", "dph_weight", "beta",
                     "dpo_eps", "dph_eps", "pooler", "objective", "dropout", "mixed_precision"),
    lr=3e-6, final_lr_ratio=0.1, clip=1.0, prior=0.5, prior_exclude=[], dpo_weight=1.0, dph_weight=1.0,
    beta=0.6, dpo_eps=0.25, dph_eps=0.1, pooler="swiglu", objective="separable", dropout=None,
    mixed_precision="no")


@dataclass
class AlignStage(_AlignOptions):
    """Stage 3: joint cDPO + DPH on the whole model (``fit`` mode ``full``), prior on all parameters.

    Besides these, its fields are :class:`~prefheads.training.FitConfig`'s (``lr``,
    ``final_lr_ratio``, ``clip``, ``prior``, ``prior_exclude``, ``dpo_weight``, ``dph_weight``,
    ``beta``, ``dpo_eps``, ``dph_eps``, ``pooler``, ``objective``, ``dropout``,
    ``mixed_precision``), with the paper's defaults: lr 3e-6, β 0.6, cDPO ε 0.25, α1 = α2 = 1.

    Attributes:
        steps: Optimizer steps (mapped exactly onto fit's epochs × batches).
        batch_size: Preference pairs per optimizer step.
        micro_batch_size: Pairs per forward pass (gradient accumulation makes up the rest).
        warmup_steps: Linear warmup steps.
        head_name: Name of the head saved with the backbone.
        val_pairs: Examples held out for the per-epoch validation pair accuracy.
        data: Training mix: choice tasks (correct answer vs a uniformly drawn wrong one, re-drawn
            every epoch) and preference datasets.
    """

    steps: int = 23040
    batch_size: int = 64
    micro_batch_size: int = 64
    warmup_steps: int = 200
    head_name: str = "general"
    val_pairs: int = 256
    data: list[TaskSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("steps, batch_size and micro_batch_size must be >= 1")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps}")
        if self.val_pairs < 0:
            raise ValueError("val_pairs must be >= 0")
        self.fit_config(task="check")  # FitConfig's own validation (objective, eps ranges...)

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size

    def fit_config(self, **kw: Any) -> FitConfig:
        """The :class:`~prefheads.training.FitConfig` of this stage (epochs etc. set by the caller)."""
        return FitConfig(**{**self.fit_options(), "mode": "full", "batch_size": self.micro_batch_size,
                            "grad_accum": self.grad_accum, "head_name": self.head_name, "weight_decay": 0.0,
                            "feature_cache": False, **kw})


@dataclass
class Stages:
    """The three stages of the in-house pipeline.

    Attributes:
        vocab: Stage 1, vocabulary extension.
        sft: Stage 2, supervised fine-tuning.
        align: Stage 3, joint cDPO + DPH alignment.
    """

    vocab: VocabStage = field(default_factory=VocabStage)
    sft: SFTStage = field(default_factory=SFTStage)
    align: AlignStage = field(default_factory=AlignStage)


@dataclass
class InHouseRecipe(RecipeBase):
    """The paper's in-house pipeline (PAPER.md section 4): vocab extension → SFT → cDPO + DPH.

    Each stage writes ``<out>/<stage>/`` (stages 1–2: ``save_pretrained`` model + tokenizer;
    stage 3: heads + fine-tuned backbone) and the next stage starts from it.

    Attributes:
        model: The starting model.
        stages: Stage settings.
        run_stages: Stages to run, in pipeline order; a later stage alone resumes from the
            previous stage's folder under ``out``.
        eval: Benchmarks scored after the last stage (log-prob vs DPH).
    """

    recipe: str = "inhouse"
    model: InHouseModelSpec = field(default_factory=InHouseModelSpec)
    stages: Stages = field(default_factory=Stages)
    run_stages: list[str] = field(default_factory=lambda: list(STAGES))
    eval: list[EvalSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = [s for s in self.run_stages if s not in STAGES]
        if bad or not self.run_stages:
            raise ValueError(f"run_stages: unknown stage(s) {bad}; choose from {list(STAGES)}")
        if list(self.run_stages) != [s for s in STAGES if s in self.run_stages]:
            raise ValueError(f"run_stages must keep pipeline order {list(STAGES)}, got {self.run_stages}")
        for name in ("vocab", "sft"):
            if name in self.run_stages and not getattr(self.stages, name).data:
                raise ValueError(f"stages.{name}.data is empty")
        if "align" in self.run_stages and not self.stages.align.data:
            raise ValueError("stages.align.data is empty")
        if self.model.base is None and self.model.tokenizer.source == "train" and not self.stages.vocab.data:
            raise ValueError("model.tokenizer.source=train needs stages.vocab.data to train on")
