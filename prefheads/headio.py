"""Head files: a folder holding ``heads.json``, one safetensors file per head, and a README card.

Layout (``huggingface_hub`` style: config JSON + safetensors + model card)::

    my-heads/
      heads.json                       # format, library version, base model, every head's config
      glue__rte.3f9c2a1b7e4d.safetensors
      README.md
      adapter/                         # heads trained with LoRA: the peft adapter they read

Each head records the adapter it reads (``heads.<name>.adapter``: a folder inside, or null for
the base model); a folder whose heads read different adapters keeps each in ``adapter/<name>/``
and is written as format version 2, which older prefheads refuse rather than misread.

Weight files are content-addressed (the name carries the first 12 hex digits of their sha256),
so a save writes new files first, then swaps ``heads.json`` in one ``os.replace``: a crash at any
point leaves a folder that loads either the old or the new set, never a mix. Files the new
config no longer references are deleted last. A LoRA adapter is rewritten in its fixed folder
before the swap; the digest recorded per head (``adapter_sha256``) lets a load refuse an
adapter that a stopped save left newer than ``heads.json``. Each weight file's sha256 is checked on load.

This module is file I/O only: it writes and reads ``{name: RewardHead}`` plus the record of the
backbone they read, and compares records. Putting heads onto a model (adapters, the backbone
each head reads) is :meth:`prefheads.model.PreferenceModel.load_heads`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prefheads.card import render_card
from prefheads.heads import HeadConfig, RewardHead

CONFIG = "heads.json"
FORMAT = "prefheads-heads"
FORMAT_VERSION = 2  # 2: heads of one folder may read different adapters (1 is written otherwise)


class HeadFileError(ValueError):
    """A head folder is missing, corrupted, or does not fit the backbone."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("prefheads")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0+unknown"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in one ``os.replace`` (fsynced; the mode a plain open() gives)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """A file to stream into (``mode`` ``"w"`` or ``"wb"``) that appears at ``path`` only once the
    block finishes (fsynced, then one ``os.replace``); on an error the temporary file is removed
    and ``path`` is untouched."""
    # not tempfile.mkstemp: its files are 0600, while a head folder should read like any other
    # output, with the mode a plain open() gives under the process umask
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.replace("/", "__"))


def heads_base(directory: str | os.PathLike) -> str | None:
    """What to load as the backbone of a head folder: its fine-tuned backbone, else the base id.

    Returns None for the bundled model.
    """
    from prefheads.loading import BUNDLED_NAME

    base = read_config(directory)["base"]
    if base.get("fine_tuned"):
        return str(Path(directory) / base["fine_tuned"])
    return None if base.get("model_id") == BUNDLED_NAME else base.get("model_id")


def heads_quantization(directory: str | os.PathLike) -> str | None:
    """The quantisation of the backbone a head folder's heads were trained on (None: plain)."""
    return read_config(directory)["base"].get("quantization")


def listed_files(directory: Path) -> set[str]:
    """Weight files named by ``directory``'s current heads.json (empty if none or unreadable)."""
    try:
        config = json.loads((directory / CONFIG).read_text())
        return {str(e["file"]) for e in config["heads"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def recorded_adapter(config: dict[str, Any], name: str) -> str | None:
    """The adapter folder (relative) head ``name`` of a folder's config reads; None: the base model."""
    entry = config["heads"][name]
    # folders written before heads recorded their own adapter name one for all, in base
    return entry["adapter"] if isinstance(entry, dict) and "adapter" in entry else config["base"].get("adapter")


def adapter_dirs(adapters: Sequence[str]) -> dict[str, str]:
    """Where each adapter is saved inside a head folder: ``adapter/``, or ``adapter/<name>/`` for several."""
    used = list(dict.fromkeys(adapters))
    return {a: "adapter" if len(used) == 1 else f"adapter/{_safe(a)}" for a in used}


def write_heads(directory: str | os.PathLike, heads: Mapping[str, RewardHead], *, base: dict[str, Any],
                active: str | None, adapters: Mapping[str, str | None],
                adapter_digests: Mapping[str, str] | None = None) -> Path:
    """Write ``heads`` into ``directory`` (weights, ``heads.json``, README card); returns the folder.

    Args:
        directory: The head folder (created if needed).
        heads: Name -> head, in the order they are listed.
        base: The record of the backbone they read (``PreferenceModel.base_record``).
        active: The default head (the first one when it is not among ``heads``).
        adapters: Name -> the adapter folder (relative, already written there) the head reads,
            or None for the base model.
        adapter_digests: Adapter folder (relative) -> the digest of what it holds
            (``binding.adapter_digest``), recorded per head as ``adapter_sha256`` so that a load
            can tell an adapter rewritten by a save that never reached ``heads.json``.
    """
    names = list(heads)
    if not names:
        raise ValueError("no heads to save")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for name, head in heads.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        # one metadata key only: safetensors orders several keys arbitrarily, which would make the
        # bytes (and so the content address) of identical weights differ between saves
        blob = st_save(tensors, metadata={"format": "pt"})
        digest = hashlib.sha256(blob).hexdigest()
        fname = f"{_safe(name)}.{digest[:12]}.safetensors"
        if not (out / fname).is_file():
            atomic_write(out / fname, blob)
        entries[name] = {"config": head.config.to_dict(), "file": fname, "sha256": digest,
                         "num_parameters": head.num_parameters(), "adapter": adapters.get(name)}
        if adapters.get(name) and adapter_digests and adapters[name] in adapter_digests:
            entries[name]["adapter_sha256"] = adapter_digests[adapters[name]]
    reads = {adapters.get(n) for n in names}
    mixed = len(reads) > 1
    # base.adapter: what prefheads before per-head adapters reads (applied to every head)
    base = dict(base, adapter=None if mixed or reads == {None} else "adapter")
    config = {"format": FORMAT, "format_version": 2 if mixed else 1, "library_version": _version(),
              "base": base, "active": active if active in entries else names[0], "heads": entries}
    # only files the folder's previous heads.json listed (written here by prefheads) may go:
    # a file prefheads did not write is never deleted, whatever its name
    previous = listed_files(out)
    atomic_write(out / CONFIG, json.dumps(config, indent=2).encode())
    keep = {e["file"] for e in entries.values()}
    for fname in previous - keep:
        f = out / fname
        if f.parent == out and re.fullmatch(r".+\.[0-9a-f]{12}\.safetensors", f.name):
            f.unlink(missing_ok=True)
    atomic_write(out / "README.md", render_card(config, {n: recorded_adapter(config, n) for n in names}).encode())
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``heads.json`` of a head folder."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise HeadFileError(f"{path}: not found (is {directory} a prefheads head folder?)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HeadFileError(f"{path}: invalid JSON ({e})") from e
    if config.get("format") != FORMAT:
        raise HeadFileError(f"{path}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise HeadFileError(f"{path}: format_version {config['format_version']} is newer than this prefheads "
                            f"({FORMAT_VERSION}); upgrade prefheads")
    for field in ("base", "heads"):
        if field not in config:
            raise HeadFileError(f"{path}: missing field '{field}'")
    return config


# what must agree between a head folder's base and the backbone it is loaded onto
SAME_BASE = ("model_type", "hidden_size", "num_layers", "vocab_size", "template_fingerprint", "reward_token",
             "weights_digest", "quantization")
# heads saved without a weights digest (or a backbone that has none: quantized, or a float16 copy)
# are matched by name; a record without a quantisation (older prefheads) was a plain backbone
SAME_BASE_BY_NAME = ("model_id", "num_layers", "template_fingerprint", "reward_token", "quantization")
QUANT_FLAGS = {"bnb-4bit-nf4": "--load-in-4bit", "bnb-8bit": "--load-in-8bit"}


def _differs(key: str, theirs: Any, mine: Any) -> str:
    if key == "weights_digest":
        return f"weights differ: digest {theirs!r} vs {mine!r}"
    if key == "quantization":
        how = f"load it with {QUANT_FLAGS[theirs]}" if theirs in QUANT_FLAGS else "load it unquantized"
        return (f"quantization: trained on a {theirs or 'plain (unquantized)'} backbone, this one is "
                f"{mine or 'plain (unquantized)'}; {how}")
    return f"{key}: {theirs!r} vs {mine!r}"


def _digests_comparable(base: dict[str, Any], mine: dict[str, Any]) -> bool:
    if not (base.get("weights_digest") and mine["weights_digest"]):
        return False
    # the digest reads values as bfloat16: exact for float32 and bfloat16 copies of one checkpoint,
    # while a float16 copy rounds differently and so is matched by name
    dtypes = {base.get("weights_dtype"), mine["weights_dtype"]}
    return len(dtypes) == 1 or dtypes <= {"float32", "bfloat16"}


def check_base(mine: dict[str, Any], base: dict[str, Any], where: str, allow_mismatch: bool,
               directory: Path | None = None) -> None:
    """Refuse heads trained on another backbone (width mismatches are never allowed).

    The backbone matches when its architecture, sizes, chat template, reward token and base
    weights digest agree with the record, however its ``model_id`` is spelt. Records without a
    digest (saved by older prefheads), quantized backbones and float16 copies of a float32 or
    bfloat16 base fall back to comparing ``model_id``.

    Args:
        mine: The record of the backbone the heads are loaded onto (``PreferenceModel.base_record``).
        base: The folder's record (``heads.json``'s ``base``).
        where: File named in errors.
        allow_mismatch: Accept another base of the same width.
        directory: The head folder (a full fine-tune's backbone is saved in it).
    """
    name = base.get("model_id")
    if base.get("fine_tuned") and directory is not None:
        # heads of a full fine-tune belong to the backbone saved beside them
        name = str(directory / base["fine_tuned"])
    if base.get("hidden_size") != mine["hidden_size"]:
        raise HeadFileError(f"{where}: heads read width {base.get('hidden_size')} of base {name!r}, "
                            f"but {mine['model_id']!r} has width {mine['hidden_size']}")
    theirs = dict(base, model_id=name)
    if _digests_comparable(base, mine):
        keys = SAME_BASE
    else:
        keys = SAME_BASE_BY_NAME
        if base.get("fine_tuned") and Path(str(mine["model_id"])).resolve() == Path(name).resolve():
            theirs["model_id"] = mine["model_id"]
    diffs = [k for k in keys if theirs.get(k) != mine[k]]
    if diffs and not allow_mismatch:
        detail = ", ".join(_differs(k, theirs.get(k), mine[k]) for k in diffs)
        raise HeadFileError(
            f"{where}: heads were trained on base {name!r}, not on {mine['model_id']!r} ({detail}); "
            "pass allow_base_mismatch=True (CLI: --allow-base-mismatch) to load them anyway"
        )


def _weights_path(directory: Path, name: str, entry: dict[str, Any], where: str) -> Path:
    """The weights file of an entry, which must lie inside the head folder."""
    fname = entry.get("file")
    if not isinstance(fname, str) or not fname:
        raise HeadFileError(f"{where}: head {name!r} has no weights 'file' (got {fname!r})")
    path = directory / fname
    root = directory.resolve()
    # resolve() follows symlinks too, so a link leading out of the folder is caught like "../x"
    if Path(fname).is_absolute() or not path.resolve().is_relative_to(root):
        raise HeadFileError(f"{where}: head {name!r} names weights file {fname!r} outside the head folder {directory}")
    return path


def _build(name: str, config: Any, where: str) -> RewardHead:
    """The head a config describes, with errors naming the field at fault."""
    if not isinstance(config, dict):
        raise HeadFileError(f"{where}: head {name!r} has no 'config' object (got {config!r})")
    try:
        hc = HeadConfig.from_dict(config)
    except (KeyError, TypeError, ValueError) as e:
        raise HeadFileError(f"{where}: head {name!r} has an invalid config: {e}") from e
    try:
        return RewardHead(hc)
    except (TypeError, ValueError, RuntimeError) as e:
        raise HeadFileError(f"{where}: head {name!r}: config field 'pooler_kwargs' {hc.pooler_kwargs} does not "
                            f"build pooler {hc.pooler!r} ({e})") from e


def _load_entry(directory: Path, name: str, entry: dict[str, Any]) -> RewardHead:
    where = str(directory / CONFIG)
    if not isinstance(entry, dict):
        raise HeadFileError(f"{where}: head {name!r} is not an object (got {entry!r})")
    path = _weights_path(directory, name, entry, where)
    if not path.is_file():
        raise HeadFileError(f"{path}: weights of head {name!r} not found")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise HeadFileError(f"{path}: weights of head {name!r} are corrupted or truncated (sha256 mismatch)")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise HeadFileError(f"{path}: unreadable safetensors file ({e})") from e
    head = _build(name, entry.get("config"), where)
    want = head.state_dict()
    missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or unexpected:
        raise HeadFileError(f"{path}: head {name!r} does not match its config in {where} "
                            f"(missing {missing}, unexpected {unexpected})")
    for k, t in want.items():
        if tensors[k].shape != t.shape:
            raise HeadFileError(f"{path}: head {name!r} does not match its config in {where}: tensor {k!r} has "
                                f"shape {list(tensors[k].shape)} in the file, the config builds {list(t.shape)}")
    head.load_state_dict(tensors)
    return head


def adapter_path(directory: Path, rel: Any, where: str) -> Path:
    """A head's adapter folder, which must lie inside the head folder and hold a peft adapter."""
    path = directory / str(rel)
    if not isinstance(rel, str) or Path(rel).is_absolute() or not path.resolve().is_relative_to(directory.resolve()):
        raise HeadFileError(f"{where}: adapter {rel!r} lies outside the head folder {directory}")
    if not (path / "adapter_config.json").is_file():
        raise HeadFileError(f"{path}: adapter_config.json not found (the LoRA adapter of these heads)")
    return path


def read_heads(directory: str | os.PathLike, config: dict[str, Any],
               names: Sequence[str] | None = None) -> dict[str, RewardHead]:
    """The heads ``names`` (default: all) of a folder whose ``heads.json`` is ``config``, all or nothing.

    Each weights file must lie in the folder, match its sha256 and fit its head's config.
    """
    directory = Path(directory)
    wanted = list(names) if names is not None else list(config["heads"])
    unknown = [n for n in wanted if n not in config["heads"]]
    if unknown:
        raise HeadFileError(f"{directory / CONFIG}: no head named {unknown}; heads: {list(config['heads'])}")
    return {n: _load_entry(directory, n, config["heads"][n]) for n in wanted}


def single_head(config: dict[str, Any], name: str | None, where: str) -> str:
    """The one head of a folder a bare head is taken from: ``name``, or the folder's only head.

    Heads of a LoRA or full fine-tuning run are refused: they read features of a changed
    backbone, which a bare head cannot bring.
    """
    names = list(config["heads"])
    if name is None:
        if len(names) != 1:
            raise HeadFileError(f"{where}: holds heads {names}; name one")
        name = names[0]
    if name not in config["heads"]:
        raise HeadFileError(f"{where}: no head named {name!r}; heads: {names}")
    if recorded_adapter(config, name) or config["base"].get("fine_tuned"):
        raise HeadFileError(f"{where}: head {name!r} was trained with a changed backbone (LoRA adapter or full "
                            "fine-tune); start from a head trained on the frozen backbone")
    return name
