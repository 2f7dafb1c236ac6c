"""Read the task catalogue: every ``defs/*.yaml`` task file and ``defs/_groups.yaml``.

Each file is parsed with ``yaml.safe_load`` and turned into a validated :class:`TaskSpec`; unknown
keys are errors (a typo in a shipped task must not pass silently). A spec is also checked against
its row adapter here (:func:`check_adapter`): the spec knows adapters by name only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .adapters import ADAPTERS, Adapter
from .harness import LM_EVAL_VARIANT, LmEvalSpec
from .spec import (DEFS_DIR, GroupSpec, HubSource, LocalSource, SpecError, TaskSpec, check_keys, fail,
                   label_key, resolve_system)

_TASK_KEYS = {f.name for f in dataclasses.fields(TaskSpec)} - {"system_id", "variant", "source_file"}


def _files(where: str, raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        fail(where, "'files' must map split names to a path or a list of paths")
    return {str(k): (v,) if isinstance(v, str) else tuple(str(p) for p in v) for k, v in raw.items()}


def _label_map(raw: Any) -> dict[str, int] | None:
    return None if raw is None else {label_key(k): int(v) for k, v in raw.items()}


def _local(where: str, raw: dict[str, Any]) -> LocalSource:
    check_keys(where, raw, {"reader", "files", "header", "columns", "fields", "label", "label_map"})
    cols = raw.get("columns")
    return LocalSource(reader=str(raw.get("reader", "jsonl")), files=_files(where, raw.get("files")),
                       header=bool(raw.get("header", True)), columns=tuple(cols) if cols else None,
                       fields=dict(raw.get("fields") or {}), label=str(raw.get("label", "label")),
                       label_map=_label_map(raw.get("label_map")))


def _hub(where: str, raw: dict[str, Any], default_fields: dict[str, str]) -> HubSource:
    check_keys(where, raw, {"id", "config", "data_dir", "revision", "fields", "label", "label_map"})
    if not raw.get("id"):
        fail(where, "hub.id is required")
    rev = raw.get("revision")
    if rev is not None and not (isinstance(rev, str) and rev.strip()):
        fail(where, f"hub.revision must be a commit sha or branch name (quoted), got {rev!r}")
    return HubSource(id=str(raw["id"]), config=raw.get("config"), data_dir=raw.get("data_dir"),
                     revision=raw.get("revision"), fields=dict(raw.get("fields") or default_fields),
                     label=str(raw.get("label", "label")), label_map=_label_map(raw.get("label_map")))


_LM_EVAL_KEYS = {f.name for f in dataclasses.fields(LmEvalSpec)}


def _lm_eval(where: str, raw: Any) -> LmEvalSpec:
    if not isinstance(raw, dict):
        fail(where, "'lm_eval' must be a mapping")
    check_keys(where, raw, _LM_EVAL_KEYS)
    for key in ("task", "source", "context"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            fail(where, f"lm_eval.{key} must be a non-empty string")
    d = dict(raw)
    for key in ("choices", "metrics"):
        if d.get(key) is not None:
            d[key] = tuple(str(x) for x in ([d[key]] if isinstance(d[key], str) else d[key]))
    return LmEvalSpec(**d)


def task_from_dict(data: dict[str, Any], source_file: str = "") -> TaskSpec:
    """Build (and validate) a :class:`TaskSpec` from a parsed YAML mapping."""
    where = source_file or str(data.get("name", "<task>"))
    if not isinstance(data, dict):
        fail(where, "a task file must hold a mapping")
    check_keys(where, data, _TASK_KEYS)
    d = dict(data)
    local = _local(f"{where}: local", d.pop("local")) if d.get("local") else None
    hub_raw = d.pop("hub", None)
    # Hub field names equal the template field names unless the YAML says otherwise.
    default_fields = {k: k for k in (local.fields if local else {})}
    hub = _hub(f"{where}: hub", hub_raw, default_fields) if hub_raw else None
    bundled_raw = d.pop("bundled", None)
    bundled = None
    if bundled_raw:
        if local is None:
            fail(where, "'bundled' reuses the 'local' reader settings, so it needs 'local'")
        bundled = dataclasses.replace(local, files=_files(f"{where}: bundled", bundled_raw))
    system_id, system = resolve_system(d.pop("system", None), where)
    lm_raw = d.pop("lm_eval", None)
    lm_eval = _lm_eval(f"{where}: lm_eval", lm_raw) if lm_raw is not None else None
    for key in ("user", "choices", "eval_splits", "metrics"):
        if key in d and d[key] is not None:
            if isinstance(d[key], str):
                d[key] = [d[key]]
            d[key] = tuple(str(x) for x in d[key])
    try:
        spec = TaskSpec(**d, hub=hub, local=local, bundled=bundled, system_id=system_id,
                        system=system, lm_eval=lm_eval, source_file=source_file)
    except TypeError as e:  # wrong value types reach the dataclass constructor
        raise SpecError(f"{where}: {e}") from None
    return check_adapter(spec)


def _provided(spec: TaskSpec, ad: Adapter) -> list[tuple[str, set[str]]]:
    # The generic "fields" adapter provides whatever each source maps; check every source.
    if ad.provides is not None:
        return [(f"adapter {spec.adapter!r}", set(ad.provides))]
    return [(f"{n}.fields", set(s.fields)) for n, s in (("local", spec.local), ("hub", spec.hub)) if s]


def check_adapter(spec: TaskSpec) -> TaskSpec:
    """``spec``, checked against its row adapter: known, of the task's kind, filling its template.

    Raises:
        SpecError: Naming the YAML file and what the adapter lacks.
    """
    where = spec.source_file or spec.name
    if spec.adapter not in ADAPTERS:
        fail(where, f"unknown adapter {spec.adapter!r}; known: {ADAPTERS.names()}")
    ad = ADAPTERS.get(spec.adapter)
    if spec.kind != ad.kind:
        fail(where, f"kind {spec.kind!r} does not match adapter {spec.adapter!r} (a {ad.kind} adapter)")
    if spec.kind == "choice":
        if spec.choice_template and not ad.has_options:
            fail(where, f"adapter {spec.adapter!r} gives no per-row options for 'choice_template'")
        for what, provided in _provided(spec, ad):
            unknown = sorted(spec.template_fields() - provided - {"choices"})
            if unknown:
                fail(where, f"template field(s) {unknown} not provided by {what} (provides {sorted(provided)})")
    if spec.lm_eval is not None:
        for _, provided in _provided(spec, ad):
            for problem in spec.lm_eval.problems(provided, ad.has_options):
                fail(f"{where}: lm_eval", problem)
    return spec


def load_defs(defs_dir: Path = DEFS_DIR) -> tuple[dict[str, TaskSpec], dict[str, GroupSpec]]:
    """Read every task YAML and ``_groups.yaml`` under ``defs_dir``, validating all of them.

    Raises:
        SpecError: On any invalid file, duplicate task name, a file whose stem does not match
            its task name (``glue/rte`` → ``glue_rte.yaml``), or a group/task mismatch.
    """
    tasks: dict[str, TaskSpec] = {}
    for path in sorted(defs_dir.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise SpecError(f"{path.name}: invalid YAML: {e}") from None
        spec = task_from_dict(data, path.name)
        if path.stem != spec.name.replace("/", "_"):
            fail(path.name, f"file name must be {spec.name.replace('/', '_')}.yaml for task {spec.name!r}")
        if spec.name in tasks:
            fail(path.name, f"duplicate task name {spec.name!r}")
        tasks[spec.name] = spec
    groups: dict[str, GroupSpec] = {}
    gpath = defs_dir / "_groups.yaml"
    raw = yaml.safe_load(gpath.read_text(encoding="utf-8")) if gpath.exists() else {"groups": {}}
    for gname, g in (raw.get("groups") or {}).items():
        check_keys(f"_groups.yaml: {gname}", g, {"members", "train_exclude", "aggregate", "description"})
        group = GroupSpec(str(gname), tuple(g.get("members") or ()), tuple(g.get("train_exclude") or ()),
                          str(g.get("aggregate", "mean")), str(g.get("description", "")))
        if gname in tasks:
            fail("_groups.yaml", f"group name {gname!r} is also a task name")
        for m in group.members:
            if m not in tasks:
                fail("_groups.yaml", f"group {gname!r} lists unknown task {m!r}")
            if tasks[m].group != gname:
                fail(tasks[m].source_file, f"task is listed in group {gname!r} but says group {tasks[m].group!r}")
        groups[str(gname)] = group
    for t in tasks.values():
        if t.group and t.group not in groups:
            fail(t.source_file, f"group {t.group!r} is not defined in _groups.yaml")
        if t.group and t.name not in groups[t.group].members:
            fail("_groups.yaml", f"group {t.group!r} does not list its member {t.name!r}")
        for v in [*t.variants, *([LM_EVAL_VARIANT] if t.lm_eval else [])]:  # every variant must build and validate
            check_adapter(t.with_variant(v))
    return tasks, groups
