"""``FitConfig``: every option of ``prefheads fit``, one dataclass (the CLI mirrors it)."""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from typing import Any, Literal

from prefheads.heads import check_head_name
from prefheads.lmscores import is_raw, score_names
from prefheads.losses import LOSSES, is_listwise
from prefheads.poolers import POOLERS, is_multi_layer
from prefheads.training.modes import MODES, choices, frozen_modes, mode_names, quantized_modes, trained_modes


@dataclass
class FitConfig:
    """Options of a training run. Field docs are the CLI help.

    Attributes:
        base: Backbone: hub id, folder, GGUF file; None = bundled SmolLM2-135M-Instruct.
        revision: Hub revision of the backbone.
        task: Task or group name (``glue/rte``, ``openbookqa``...), or None with ``data``.
        data: A JSONL file of ``{"prompt", "chosen", "rejected"}`` preference pairs.
        data_dir: Folder of local dataset copies (default: $PREFHEADS_DATA, else the hub).
        template: Template family of the task's inputs. paper (PAPER.md section 6), paper_fixed,
            reference, or lm-eval (lm-evaluation-harness's prompt in the user turn and its
            continuation as the assistant reply). Default: lm-eval where every task trained
            has it, else paper.
        out: Output folder of the head set. It must be new, empty, or hold this same run's
            output (same options: a rerun or --resume); anything else needs --overwrite.
        overwrite: Write into an --out folder that holds other files or another run's output.
            Files prefheads did not write there are never deleted.
        head_name: Name of the trained head (default: the task name, or "default").
        init_head: Start from a saved head, FOLDER or FOLDER:NAME. For example a frozen probe
            before --mode lora or full (linear probing, then fine-tuning); its pooler, layer and
            input standardiser are kept, its dropout set as here.
        pooler: Registered pooler (identity, bert, swiglu, ...). Default identity: a linear
            head on the standardised state (the paper's head is swiglu).
        layer: Hidden state read: -1, a block index, or auto. -1 = after the final norm, i =
            output of block i, "auto": one head per candidate layer (see layers), the best on the
            validation split kept. Default: auto in frozen mode, -1 in lora / full modes.
        layers: Candidate layers of --layer auto, or the layers a multi-layer pooler mixes.
            "all", "0,5,10", "10:20" (Python slice; -1 is the final norm). Default for auto:
            eight layers from a third of the depth up and the final norm (hooks.auto_layers).
        layermix_inner: Pooler applied to the layer mix (identity, bert, swiglu).
        lm_score: The LM's own score a frozen head adds to its reward. r = head(h) + w·s: none
            (the paper's pure DPH), auto (the best of logprob_sum, logprob_mean, logprob_char
            on the training split, each candidate head also trained without it and validation
            deciding; with the ridge solver also their raw-view versions and the combination of
            them all), all (the ridge solver's combination of every score), or a score name
            (raw:... names: the ridge solver). The head starts from the score; if it does not
            beat the score alone on validation it is saved as the score alone. Default: auto in
            frozen mode, none in lora / full modes.
        raw_view: Also offer the ridge solver the LM's scores in the raw view. The raw view is
            the prompt's plain text and the answer, no chat template, as lm-evaluation-harness
            scores a question: one more log-prob-only backbone pass when fitting, and when
            scoring with a head that uses its scores.
        objective: DPH loss (any registered loss). separable or contrastive (a sampled wrong
            answer per question and epoch), or listwise (a softmax over all of a question's
            candidates). Default: listwise, or separable with the joint cDPO objective
            (dpo_weight > 0); none with the ridge solver (its own least-squares objective).
        dph_eps: Label smoothing ε of the DPH loss.
        solver: How a frozen head is fitted: ridge or adamw. ridge (a linear head, identity pooler:
            closed-form least squares on question-centred standardised states, its layer, LM score
            and L2 strength chosen by cross-validation on the training data; objective, epochs, lr
            and the validation split are not used) or adamw (the DPH objective in the training loop,
            best epoch on the validation split). Default: ridge for a frozen identity head with no
            objective, init head or cDPO asked for, else adamw.
        cv_folds: Folds of the ridge solver's cross-validation (over questions).
        epochs: Passes over the training pairs.
        batch_size: Pairs per optimizer step.
        lr: Peak learning rate.
        head_lr: Peak learning rate of the head in lora / full modes (default: lr).
        weight_decay: AdamW weight decay of the head (LoRA adapters and the backbone get none).
        warmup_ratio: Fraction of steps of linear warmup before cosine decay.
        final_lr_ratio: Cosine decays to lr · final_lr_ratio.
        clip: Gradient-norm clip.
        dropout: Pooler-output dropout (None: 0.1, but 0 for a frozen backbone).
        seed: Seed of sampling, initialisation and shuffling.
        max_train: Cap on training examples (seeded subset). Without it a frozen run takes all the
            training data its backbone pass can cover within time_budget.
        time_budget: Minutes a frozen run's backbone pass may take without max_train (the raw
            view's pass included). The pass is priced before it runs (padded tokens over a timed sample) and the
            data capped to a seeded subset that fits, with the count printed and recorded (pass
            --max-train with that count to rerun it exactly; --resume keeps the count the run started with). 0: no cap.
        max_eval: Cap on evaluation examples (seeded subset).
        truncation: What a sequence longer than the model's context loses. left (the oldest
            prompt tokens), right (the end of the answer; the reward token stays last) or error
            (refuse the run). Truncated rows are counted in the output and the head's metadata.
        val_fraction: Share of training examples carved out for validation (best epoch kept).
        mode: Training mode (any registered mode). frozen (head only, cached features) | lora
            (peft adapters + head) | full (all, prior-regularized).
        shared_prefix: Encode each prompt once for all its candidates.
        feature_cache: Cache frozen-backbone features on disk.
        cache_dir: Feature cache folder (default $PREFHEADS_CACHE/features).
        cache_dtype: float32 or float16 feature storage.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_targets: LoRA target modules (default: the zoo profile's).
        prior: Prior-regularization coefficient toward the starting weights (full mode), at the backbone's lr.
        prior_exclude: Name substrings of parameters without prior regularization (e.g. embed).
        dpo_weight: α1 of the joint α1·cDPO + α2·DPH objective (0: DPH only).
        dph_weight: α2 of the joint objective.
        beta: DPO β.
        dpo_eps: cDPO label smoothing ε.
        grad_accum: Gradient-accumulation steps (through accelerate).
        mixed_precision: no | fp16 | bf16 (through accelerate).
        save_every: Checkpoint every N optimizer steps (0: at epoch ends only).
        resume: Continue from the checkpoint in ``out/checkpoint`` if there is one.
        fsdp: Shard the run over the processes of a torchrun launch (torch FSDP2). Parameters,
            gradients and optimizer state are sharded (lora and full modes; gloo on CPU). Without
            it several processes run plain data parallel; in one process it changes nothing.
        load_in_4bit: Load the backbone 4-bit NF4 quantized (bitsandbytes, CPU or CUDA; frozen mode,
            and lora mode: QLoRA).
        load_in_8bit: Load the backbone 8-bit quantized (bitsandbytes, CPU or CUDA; frozen and lora modes).
        log_with: Also log metrics to tensorboard or wandb (through accelerate); off unless asked.
    """

    base: str | None = None
    revision: str | None = None
    task: str | None = None
    data: str | None = None
    data_dir: str | None = None
    template: str | None = None
    out: str = "runs/heads"
    overwrite: bool = False
    head_name: str | None = None
    init_head: str | None = None
    pooler: str = "identity"
    layer: int | Literal["auto"] | None = None
    layers: str | None = None
    layermix_inner: str = "identity"
    lm_score: str | None = None
    raw_view: bool = True
    objective: str | None = None
    dph_eps: float = 0.1
    solver: str | None = None
    cv_folds: int = 5
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    final_lr_ratio: float = 0.1
    clip: float = 1.0
    dropout: float | None = None
    seed: int = 0
    max_train: int | None = None
    time_budget: float = 30.0
    max_eval: int | None = None
    truncation: str = "left"
    val_fraction: float = 0.1
    mode: str = "frozen"
    shared_prefix: bool = True
    feature_cache: bool = True
    cache_dir: str | None = None
    cache_dtype: str = "float32"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None
    prior: float = 0.5
    prior_exclude: list[str] = field(default_factory=list)
    dpo_weight: float = 0.0
    dph_weight: float = 1.0
    beta: float = 0.1
    dpo_eps: float = 0.1
    grad_accum: int = 1
    mixed_precision: str = "no"
    save_every: int = 0
    resume: bool = False
    fsdp: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    log_with: str | None = None

    def __post_init__(self) -> None:
        if self.task and self.task.startswith("pairs:") and self.data is None:
            self.task, self.data = None, self.task[len("pairs:"):]
        if self.task is None and self.data is None:
            raise ValueError("give a task (--task) or a preference file (--data)")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not available; choose {choices(mode_names())}")
        if self.pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS.names()}, got {self.pooler!r}")
        if self.head_name is not None:
            check_head_name(self.head_name)  # before any backbone pass
        self._resolve_defaults()
        self.layer = _layer(self.layer)
        if self.init_head and self.layer == "auto":
            raise ValueError("init_head starts one head; it cannot be combined with layer=auto")
        mode = MODES.get(self.mode)
        if self.dpo_weight < 0 or self.dph_weight < 0:
            raise ValueError("dpo_weight and dph_weight must be >= 0")
        if self.time_budget < 0:
            raise ValueError(f"time_budget is in minutes, >= 0 (0: no cap), got {self.time_budget}")
        if (self.load_in_4bit or self.load_in_8bit) and not mode.quantized:
            raise ValueError(f"quantized backbones train in {choices(quantized_modes())} mode only, not {self.mode}")
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit")
        if self.fsdp and not mode.trains_backbone:
            raise ValueError(f"fsdp shards a trained backbone: {choices(trained_modes())} mode ({self.mode} mode "
                             "trains the head alone)")
        if self.fsdp and (self.load_in_4bit or self.load_in_8bit):
            raise ValueError("fsdp shards float weights: not with load_in_4bit / load_in_8bit")
        if self.log_with not in (None, "tensorboard", "wandb"):
            raise ValueError(f"log_with must be tensorboard or wandb, got {self.log_with!r}")
        if not 0.0 <= self.dpo_eps <= 0.5:
            raise ValueError(f"dpo_eps must be in [0, 0.5], got {self.dpo_eps}")
        if self.objective is not None and self.objective not in LOSSES:
            raise ValueError(f"objective must be one of {LOSSES.names()}, got {self.objective!r}")
        if self.objective is not None and is_listwise(self.objective) and self.dpo_weight:
            pairwise = [n for n in LOSSES.names(sort=False) if not is_listwise(n)]
            raise ValueError(f"the joint cDPO objective trains on pairs: use {choices(pairwise)} with --dpo-weight")
        if not 0.0 <= self.dph_eps <= 0.5:
            raise ValueError(f"dph_eps must be in [0, 0.5], got {self.dph_eps}")
        if self.layer == "auto" and mode.trains_backbone:
            raise ValueError(f"--layer auto trains one head per layer on cached features: "
                             f"{choices(frozen_modes())} mode only")
        if is_multi_layer(self.pooler) and not self.layers:
            raise ValueError(f"the {self.pooler} pooler needs --layers (e.g. all, or 10:20)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lm_score not in ("auto", "none", "all", *score_names()):
            raise ValueError(f"lm_score must be auto, none, all or one of {score_names()}, got {self.lm_score!r}")
        if self.lm_score not in ("auto", "none") and mode.trains_backbone:
            raise ValueError(f"lm_score adds the frozen LM's score: {choices(frozen_modes())} mode only "
                             "(use --lm-score none)")
        if self.truncation not in ("left", "right", "error"):
            raise ValueError(f"truncation must be left, right or error, got {self.truncation!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def _resolve_defaults(self) -> None:
        """Fill the options left None with the defaults of this mode and task (recorded resolved)."""
        frozen = not MODES.get(self.mode).trains_backbone  # cached features, only the head trains
        if self.layer is None:
            self.layer = "auto" if frozen and not self.init_head and not is_multi_layer(self.pooler) else -1
        if self.lm_score is None:
            self.lm_score = "auto" if frozen and not self.init_head else "none"
        linear = frozen and self.pooler == "identity" and not self.init_head and not self.dpo_weight
        if self.solver is None:
            self.solver = "ridge" if linear and self.objective is None else "adamw"
        if self.solver not in ("ridge", "adamw"):
            raise ValueError(f"solver must be ridge or adamw, got {self.solver!r}")
        if self.solver == "ridge" and not (linear and self.objective is None):
            raise ValueError("the ridge solver fits a linear head on a frozen backbone in closed form: it needs "
                             "--mode frozen, --pooler identity and no --objective, --init-head or --dpo-weight "
                             "(or use --solver adamw)")
        if self.lm_score and (self.lm_score == "all" or is_raw(self.lm_score)) and self.solver != "ridge":
            raise ValueError(f"--lm-score {self.lm_score} is fitted by the ridge solver (a combination of scores, "
                             "or a raw-view score): use --solver ridge (frozen mode, identity pooler)")
        if is_raw(self.lm_score or "") and not self.raw_view:
            raise ValueError(f"--lm-score {self.lm_score} is read in the raw view: drop --no-raw-view")
        if self.objective is None and self.solver == "adamw":
            self.objective = "separable" if self.dpo_weight else "listwise"
        if self.template is None:
            self.template = default_template(self.task)
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")

    @property
    def head_dropout(self) -> float:
        """Dropout actually used: 0 on a frozen backbone unless set."""
        if self.dropout is not None:
            return self.dropout
        return 0.1 if MODES.get(self.mode).trains_backbone else 0.0

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


def default_template(task: str | None) -> str:
    """``lm-eval`` when every task ``task`` trains on has lm-evaluation-harness's template, else ``paper``."""
    if not task:
        return "paper"
    from prefheads import tasks
    from prefheads.tasks.harness import LM_EVAL_VARIANT

    try:
        names = tasks.expand(task, train=True)
        ok = all(tasks.get_task(n).lm_eval is not None for n in names)
    except KeyError:  # an unknown task name is reported where the data are loaded
        return "paper"
    return LM_EVAL_VARIANT if ok else "paper"


def _layer(value: Any) -> int | Literal["auto"]:
    """``layer`` as given on a command line, in a file or in Python: an int, or ``"auto"``."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"layer must be an integer or 'auto', got {value!r}") from None


def fit_options(name: str, names: tuple[str, ...], **defaults: Any) -> type:
    """A dataclass of some :class:`FitConfig` fields, for configs that embed part of one.

    Each field keeps FitConfig's type and help text, and its default unless ``defaults`` gives
    another. Instances have ``fit_options()``: those fields' values, ready for ``FitConfig(**...)``.
    A recipe config inherits it instead of declaring the fields again.

    Args:
        name: Class name.
        names: FitConfig field names.
        **defaults: Defaults that differ from FitConfig's.
    """
    from prefheads.cliargs import field_docs

    hints, known, docs = typing.get_type_hints(FitConfig), {f.name: f for f in fields(FitConfig)}, field_docs(FitConfig)
    unknown = sorted(set(names) - set(known)) + sorted(set(defaults) - set(names))
    if unknown:
        raise ValueError(f"not fields of this part of FitConfig: {unknown}")
    specs = []
    for n in names:
        f = known[n]
        if n in defaults:
            d = defaults[n]
            spec = field(default_factory=lambda d=d: copy.deepcopy(d)) if isinstance(d, (list, dict)) else field(default=d)
        elif f.default_factory is not MISSING:
            spec = field(default_factory=f.default_factory)
        else:
            spec = field(default=f.default)
        specs.append((n, hints[n], spec))

    def fit_options(self: Any) -> dict[str, Any]:
        """These fields' values, as FitConfig options."""
        return {n: copy.deepcopy(getattr(self, n)) for n in names}

    cls = make_dataclass(name, specs, namespace={"fit_options": fit_options})
    cls.__doc__ = (f"Options of :class:`FitConfig` ({', '.join(names)}).\n\nAttributes:\n"
                   + "\n".join(f"    {n}: {docs.get(n, '')}" for n in names))
    return cls
