"""Task specifications: dataclasses loaded from ``defs/*.yaml`` and validated on construction.

A task is data (STYLE.md principle 4): where its rows live (hub id / local release files), which
adapter reads them, and the prompt template, choices, label mapping and metrics. The prompt
template is a list of *segments* — the pieces between the "/" marks of the paper's table
(PAPER.md section 6) — joined by ``separator`` (a newline in the paper variant).

Template variants: ``paper`` (default; the paper's wording, spelling slips included),
``paper_fixed`` (slips corrected) and ``reference`` (the public reference code's layout, which
puts a blank line between segments). A task lists only the variants that differ from ``paper``;
naming a universal variant a task does not override gives the paper template unchanged.

A second template family, ``lm-eval``, is lm-evaluation-harness's own prompt and continuation
(no system prompt), from the task's ``lm_eval`` block (:mod:`.harness`): tasks the harness does
not define have none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .harness import HARNESS_VERSION, LM_EVAL_VARIANT, PREPS, LmEvalSpec
from .readers import READERS

DEFS_DIR = Path(__file__).with_name("defs")
KNOWN_METRICS = frozenset({"mcc", "accuracy", "f1", "pearson", "spearman"})
UNIVERSAL_VARIANTS = ("paper", "paper_fixed", "reference")
_VARIANT_KEYS = frozenset({"system", "user", "separator", "choices", "choice_template"})


class SpecError(ValueError):
    """A task or group definition is invalid; the message names the YAML file and key."""


def fail(where: str, msg: str) -> None:
    raise SpecError(f"{where}: {msg}")


def check_keys(where: str, data: dict[str, Any], allowed: set[str] | frozenset[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def label_key(raw: Any) -> str:
    """Normalise a raw label (or a label_map key) to a string: ``True`` → ``"true"``, 1 → ``"1"``."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return str(raw).strip()


@dataclass(frozen=True)
class SourceSpec:
    """How rows of one source map to template fields and labels.

    Attributes:
        fields: Template field → column / hub field name (``fields`` adapter only).
        label: Column / field holding the label (``fields`` adapter only).
        label_map: Raw label (as :func:`label_key` writes it) → choice index; ``None`` means
            the label is already an index, or (with row options) a key among the option labels.
    """

    fields: dict[str, str] = field(default_factory=dict)
    label: str = "label"
    label_map: dict[str, int] | None = None


@dataclass(frozen=True)
class LocalSource(SourceSpec):
    """Release files under a data dir (``glue/RTE/dev.tsv``...).

    Attributes:
        reader: File format: ``tsv``, ``jsonl`` (``.gz`` too), ``piqa`` (JSONL + ``-labels.lst``),
            ``race_dir`` (a folder of per-passage JSON files), ``squad_json``, ``mmlu_csv``.
        files: Split → paths relative to the data dir.
        header: Whether a TSV starts with a header row.
        columns: Column names of a header-less TSV.
    """

    reader: str = "jsonl"
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    header: bool = True
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class HubSource(SourceSpec):
    """A Hugging Face hub dataset, read with ``datasets.load_dataset``.

    Attributes:
        id: Dataset repo id.
        config: Config (subset) name, if any.
        data_dir: Sub-folder argument of ``load_dataset`` (HH-RLHF subsets), if any.
        revision: Git revision (commit sha) the task reads; ``None`` = the default branch.
    """

    id: str = ""
    config: str | None = None
    data_dir: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task: data sources, prompt template, choices, labels and metrics.

    Attributes:
        name: Canonical name (``glue/rte``, ``arc_easy``...).
        group: Group it belongs to (``glue``, ``gpt4all``, ``race``) or ``None``.
        description: One line for ``prefheads tasks list``.
        kind: ``"choice"`` (labelled multiple choice → examples, pairs derived) or ``"pairs"``.
        adapter: Row adapter name (:mod:`.adapters`).
        hub / local / bundled: Data sources (``bundled`` reuses ``local``'s reader settings with
            files inside the package's ``prefheads/data``).
        train_split: Split used for training (as named by the sources' split keys).
        eval_splits: Split(s) evaluated (two for MNLI: matched, mismatched).
        system_id / system: System prompt id (A–E, see ``defs/_prompts.yaml``) and its text.
        user: Template segments of the user message ("/"-separated cells of the paper's table).
        separator: What joins segments (``"\\n"``).
        choices: Fixed assistant choices (GLUE, BoolQ), or ``None``.
        choice_template: Per-row choice format over ``{label}`` / ``{text}`` and the row's
            fields (ARC: ``"{label}. {text}"``); ``{choices}`` in ``user`` is the list of
            rendered choices, one per line.
        label_kind: ``"index"``, or ``"score"`` (STS-B: a float rounded to the nearest choice;
            the float is kept in ``meta["score"]``).
        metrics: Metric names (``mcc``, ``accuracy``, ``f1``, ``pearson``, ``spearman``).
        positive_label: Choice index of the positive class for F1 (MRPC/QQP: 1, "yes").
        variant: Name of the applied template variant.
        variants: Variant name → overrides of ``system``/``user``/``separator``/``choices``.
        options: Adapter options (SQuAD v2: ``noun_spans``, ``unanswerable``).
        lm_eval: lm-evaluation-harness's definition of the task (the ``lm-eval`` variant), or
            ``None`` where the harness has no such task.
        source_file: The YAML it came from.
    """

    name: str
    adapter: str
    kind: str = "choice"
    group: str | None = None
    description: str = ""
    hub: HubSource | None = None
    local: LocalSource | None = None
    bundled: LocalSource | None = None
    train_split: str | None = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    system_id: str | None = None
    system: str | None = None
    user: tuple[str, ...] = ()
    separator: str = "\n"
    choices: tuple[str, ...] | None = None
    choice_template: str | None = None
    label_kind: str = "index"
    metrics: tuple[str, ...] = ("accuracy",)
    positive_label: int | None = None
    variant: str = "paper"
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    lm_eval: LmEvalSpec | None = None
    source_file: str = ""

    def __post_init__(self) -> None:
        where = self.source_file or self.name or "<task>"
        if not self.name or self.name != self.name.strip().lower():
            fail(where, f"name must be a non-empty lower-case string, got {self.name!r}")
        if self.kind not in ("choice", "pairs"):
            fail(where, f"kind must be 'choice' or 'pairs', got {self.kind!r}")
        if not (self.hub or self.local):
            fail(where, "needs a 'hub' or a 'local' source")
        bad = sorted(set(self.metrics) - KNOWN_METRICS)
        if bad or not self.metrics:
            fail(where, f"unknown metric(s) {bad}; known: {sorted(KNOWN_METRICS)}")
        if self.label_kind not in ("index", "score"):
            fail(where, f"label_kind must be 'index' or 'score', got {self.label_kind!r}")
        splits = [s for s in (self.train_split, *self.eval_splits) if s]
        for src_name, src in (("local", self.local), ("bundled", self.bundled)):
            if src is not None and src.reader not in READERS:
                fail(where, f"{src_name}.reader {src.reader!r} unknown; known: {READERS.names()}")
        if self.local is not None:
            missing = [s for s in splits if s not in self.local.files]
            if missing:
                fail(where, f"local.files has no entry for split(s) {missing}")
        if self.kind == "choice":
            self._check_template(where)
        if self.lm_eval is not None and self.kind != "choice":
            fail(where, "an 'lm_eval' block needs a choice task")
        if self.variant not in self._variant_names():
            fail(where, f"unknown variant {self.variant!r}")
        for vname, over in self.variants.items():
            check_keys(f"{where}: variants.{vname}", over, _VARIANT_KEYS)

    def _check_template(self, where: str) -> None:
        # what the row adapter must fill is checked against it by catalog.check_adapter
        if not self.user:
            fail(where, "a choice task needs a 'user' template")
        if bool(self.choices) == bool(self.choice_template):
            fail(where, "give exactly one of 'choices' (fixed) or 'choice_template' (per row)")
        if self.choices is not None and any(not isinstance(c, str) or not c for c in self.choices):
            fail(where, f"choices must be non-empty strings, got {list(self.choices)}")
        placeholders = self.template_fields()
        if "choices" in placeholders and not self.choice_template:
            fail(where, "'{choices}' in the template needs a 'choice_template'")
        if self.label_kind == "score" and not (self.choices and all(c.isdigit() for c in self.choices)):
            fail(where, "label_kind 'score' needs numeric fixed choices ('0'..'5')")
        if self.positive_label is not None and not (self.choices and 0 <= self.positive_label < len(self.choices)):
            fail(where, f"positive_label {self.positive_label} is not a choice index")

    def template_fields(self) -> set[str]:
        """Fields the user template names (less those the lm-eval preprocessor adds itself)."""
        fields = {f for seg in self.user for _, f, _, _ in string.Formatter().parse(seg) if f}
        if self.variant == LM_EVAL_VARIANT and self.lm_eval is not None and self.lm_eval.prep:
            fields -= PREPS.get(self.lm_eval.prep).adds  # fields its preprocessor adds
        return fields

    def _variant_names(self) -> set[str]:
        return set(UNIVERSAL_VARIANTS) | set(self.variants) | ({LM_EVAL_VARIANT} if self.lm_eval else set())

    @property
    def splits(self) -> tuple[str, ...]:
        """Train split (if any) followed by the eval splits."""
        return tuple(dict.fromkeys(s for s in (self.train_split, *self.eval_splits) if s))

    def user_template(self) -> str:
        """The user template as one string (segments joined by the separator)."""
        return self.separator.join(self.user)

    def with_variant(self, variant: str) -> "TaskSpec":
        """This spec with template variant ``variant`` applied (``"paper"``: unchanged)."""
        if variant == self.variant:
            return self
        if variant == LM_EVAL_VARIANT and self.lm_eval is None:
            raise SpecError(f"{self.name}: no {LM_EVAL_VARIANT!r} template: lm-evaluation-harness "
                            f"{HARNESS_VERSION} defines no such task")
        if variant not in self._variant_names():
            known = sorted(self._variant_names())
            raise SpecError(f"{self.name}: unknown template variant {variant!r}; known: {known}")
        if self.variant != "paper":
            raise SpecError(f"{self.name}: apply variants to the paper spec, e.g. "
                            f"get_task({self.name!r}, variant={variant!r})")
        if variant == LM_EVAL_VARIANT:
            return self._lm_eval_spec()
        over = self.variants.get(variant, {})
        changes: dict[str, Any] = {"variant": variant}
        if "system" in over:
            changes["system_id"], changes["system"] = resolve_system(over["system"], self.source_file)
        for key in ("user", "choices"):
            if key in over:
                changes[key] = tuple(over[key])
        for key in ("separator", "choice_template"):
            if key in over:
                changes[key] = over[key]
        return dataclasses.replace(self, **changes)

    def _lm_eval_spec(self) -> "TaskSpec":
        # Chat path: the harness context is the user turn (no system prompt), the stripped
        # continuation the assistant reply; loaders.build_example renders it via harness.render_row.
        lm = self.lm_eval
        assert lm is not None
        per_row = lm.partial or lm.choice is not None
        return dataclasses.replace(
            self, variant=LM_EVAL_VARIANT, system_id=None, system=None, separator="\n",
            user=(lm.user or lm.context,),
            choices=None if per_row else tuple(c.strip() for c in lm.choices or ()),
            choice_template=(lm.chat_choice or lm.choice) if per_row else None)

    def template_hash(self) -> str:
        """sha256 (16 hex) of everything that shapes the rendered text, for head artifacts."""
        parts: list[Any] = [self.name, self.variant, self.system, list(self.user), self.separator,
                            list(self.choices or ()), self.choice_template]
        if self.variant == LM_EVAL_VARIANT and self.lm_eval is not None:
            parts.append(self.lm_eval.as_dict())
        blob = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GroupSpec:
    """A named group of tasks.

    Attributes:
        name: Group name.
        members: Member task names, in reporting order.
        train_exclude: Members left out of training mixes (GLUE: WNLI, as in the paper).
        aggregate: How the group score is formed (``macro``, ``mean``, ``weighted``).
        description: One line of help.
    """

    name: str
    members: tuple[str, ...]
    train_exclude: tuple[str, ...] = ()
    aggregate: str = "mean"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.members:
            raise SpecError(f"group {self.name!r} has no members")
        if not set(self.train_exclude) <= set(self.members):
            raise SpecError(f"group {self.name!r}: train_exclude must list members")


# ---------------------------------------------------------------------------- system prompts

_PROMPTS: dict[str, str] = {}


def system_prompts() -> dict[str, str]:
    """System prompt id → text, from ``defs/_prompts.yaml``."""
    if not _PROMPTS:
        data = yaml.safe_load((DEFS_DIR / "_prompts.yaml").read_text(encoding="utf-8"))
        _PROMPTS.update({str(k): str(v) for k, v in data["system_prompts"].items()})
    return _PROMPTS


def resolve_system(value: Any, where: str) -> tuple[str | None, str | None]:
    """(id, text) of a ``system`` entry: an id from ``_prompts.yaml``, literal text, or null."""
    if value is None:
        return None, None
    value = str(value)
    prompts = system_prompts()
    if value in prompts:
        return value, prompts[value]
    if " " not in value.strip():  # looks like an id, not a sentence: a typo, most likely
        raise SpecError(f"{where}: unknown system prompt id {value!r}; known: {sorted(prompts)}")
    return None, value
