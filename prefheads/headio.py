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
config no longer references are deleted last. Each weight file's sha256 is checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from prefheads.binding import load_adapter, pin, prune, recorded_adapter, save_adapter
from prefheads.card import render_card
from prefheads.heads import HeadConfig, RewardHead

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

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


def _atomic_write(path: Path, data: bytes) -> None:
    # not tempfile.mkstemp: its files are 0600, while a head folder should read like any other
    # output, with the mode a plain open() gives under the process umask
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.replace("/", "__"))


def base_record(pm: "PreferenceModel") -> dict[str, Any]:
    """What identifies the backbone a head was trained on.

    ``weights_digest`` fingerprints the base weights (adapters left out; for a full fine-tune,
    the tuned weights saved beside the heads), so the same weights match whatever path or hub
    id they were loaded from. ``quantization`` names a 4/8-bit load (``bnb-4bit-nf4``,
    ``bnb-8bit``; None for plain weights): a head reads the features of the backbone it was
    trained on, quantisation included.
    """
    from prefheads.families import unwrap
    from prefheads.loading import quantization_of

    cfg = unwrap(pm.backbone).config
    return {
        "model_id": pm.model_id,
        "revision": pm.revision,
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": pm.hidden_size,
        "num_layers": pm.num_layers,
        "vocab_size": getattr(cfg, "vocab_size", None),
        "weights_digest": pm.base_fingerprint(),
        "weights_dtype": str(getattr(unwrap(pm.backbone), "dtype", "")).removeprefix("torch.") or None,
        "quantization": quantization_of(pm.backbone),
        "chat_mode": pm.chat.mode,
        "reward_token": pm.chat.reward_token,
        "reward_token_id": pm.chat.reward_token_id,
        "template_fingerprint": pm.chat.fingerprint,
        # LoRA runs save their adapter, full runs their backbone, beside the heads (relative paths)
        "adapter": getattr(pm, "adapter", None),
        "fine_tuned": getattr(pm, "fine_tuned", None),
    }


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


def save_heads(pm: "PreferenceModel", directory: str | os.PathLike, names: Sequence[str] | None = None) -> Path:
    """Save heads of ``pm`` (all by default) into ``directory``; returns the folder."""
    names = list(names) if names is not None else pm.head_names
    if not names:
        raise ValueError("no heads to save")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # each head's adapter is saved beside it, before heads.json names it
    reads = {name: pm.adapter_of(name) for name in names}
    used = list(dict.fromkeys(a for a in reads.values() if a is not None))
    dirs = {a: "adapter" if len(used) == 1 else f"adapter/{_safe(a)}" for a in used}
    for a, rel in dirs.items():
        save_adapter(pm, a, out / rel)
    entries: dict[str, Any] = {}
    for name in names:
        head = pm._get(name)
        tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        # one metadata key only: safetensors orders several keys arbitrarily, which would make the
        # bytes (and so the content address) of identical weights differ between saves
        blob = st_save(tensors, metadata={"format": "pt"})
        digest = hashlib.sha256(blob).hexdigest()
        fname = f"{_safe(name)}.{digest[:12]}.safetensors"
        if not (out / fname).is_file():
            _atomic_write(out / fname, blob)
        entries[name] = {"config": head.config.to_dict(), "file": fname, "sha256": digest,
                         "num_parameters": head.num_parameters(), "adapter": dirs.get(reads[name])}
    mixed = len(set(reads.values())) > 1
    # base.adapter: what prefheads before per-head adapters reads (applied to every head)
    base = dict(base_record(pm), adapter=None if mixed or not used else "adapter")
    config = {"format": FORMAT, "format_version": 2 if mixed else 1, "library_version": _version(),
              "base": base, "active": pm.active if pm.active in entries else names[0], "heads": entries}
    # only files the folder's previous heads.json listed (written here by prefheads) may go:
    # a file prefheads did not write is never deleted, whatever its name
    previous = listed_files(out)
    _atomic_write(out / CONFIG, json.dumps(config, indent=2).encode())
    keep = {e["file"] for e in entries.values()}
    for fname in previous - keep:
        f = out / fname
        if f.parent == out and re.fullmatch(r".+\.[0-9a-f]{12}\.safetensors", f.name):
            f.unlink(missing_ok=True)
    _atomic_write(out / "README.md", render_card(config).encode())
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


def check_base(pm: "PreferenceModel", base: dict[str, Any], where: str, allow_mismatch: bool,
               directory: Path | None = None) -> None:
    """Refuse heads trained on another backbone (width mismatches are never allowed).

    The backbone matches when its architecture, sizes, chat template, reward token and base
    weights digest agree with the record, however its ``model_id`` is spelt. Records without a
    digest (saved by older prefheads), quantized backbones and float16 copies of a float32 or
    bfloat16 base fall back to comparing ``model_id``.
    """
    mine = base_record(pm)
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
        if base.get("fine_tuned") and Path(str(pm.model_id)).resolve() == Path(name).resolve():
            theirs["model_id"] = pm.model_id
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


def _check_depth(pm: "PreferenceModel", head: RewardHead, name: str, where: str, base: dict[str, Any]) -> None:
    # a layer mix is tied to its backbone's depth: never loadable elsewhere, override or not
    if head.config.layers and head.config.num_base_layers not in (None, pm.num_layers):
        raise HeadFileError(f"{where}: head {name!r} mixes layers of a {head.config.num_base_layers}-block "
                            f"base ({base.get('model_id')!r}); {pm.model_id!r} has {pm.num_layers} blocks")


def _adapter_path(directory: Path, rel: Any, where: str) -> Path:
    """A head's adapter folder, which must lie inside the head folder and hold a peft adapter."""
    path = directory / str(rel)
    if not isinstance(rel, str) or Path(rel).is_absolute() or not path.resolve().is_relative_to(directory.resolve()):
        raise HeadFileError(f"{where}: adapter {rel!r} lies outside the head folder {directory}")
    if not (path / "adapter_config.json").is_file():
        raise HeadFileError(f"{path}: adapter_config.json not found (the LoRA adapter of these heads)")
    return path


def _check_one_backbone(pm: "PreferenceModel", directory: Path, config: dict[str, Any]) -> None:
    """Heads of a full fine-tune read their own backbone: never beside heads of another folder."""
    here = str(directory.resolve())
    others = sorted({f for f in pm.head_folders.values() if f != here})
    if config["base"].get("fine_tuned") and others:
        raise HeadFileError(f"{directory}: its heads were trained with --mode full and read the fine-tuned backbone "
                            f"saved in it, not the backbone the heads of {others[0]} read; load each folder into its "
                            "own PreferenceModel")
    full = pm.backbone_folder
    if full is not None and full != here and full in others:
        raise HeadFileError(f"{directory}: cannot be loaded beside the heads of {full}, which were trained with "
                            f"--mode full and read the fine-tuned backbone saved there; load each folder into its "
                            "own PreferenceModel")


def load_heads(pm: "PreferenceModel", directory: str | os.PathLike, *, names: Sequence[str] | None = None,
               allow_base_mismatch: bool = False) -> list[str]:
    """Load heads from ``directory`` onto ``pm``; returns the names loaded (replacing same names).

    Heads trained with LoRA are bound to their folder's adapter, loaded once under a name of its
    own beside the adapters already loaded; heads of the frozen backbone read the base model.
    Heads of a full fine-tune are refused beside heads of any other folder.
    """
    directory = Path(directory)
    config = read_config(directory)
    where = str(directory / CONFIG)
    _check_one_backbone(pm, directory, config)
    check_base(pm, config["base"], where, allow_base_mismatch, directory)
    wanted = list(names) if names is not None else list(config["heads"])
    unknown = [n for n in wanted if n not in config["heads"]]
    if unknown:
        raise HeadFileError(f"{directory / CONFIG}: no head named {unknown}; heads: {list(config['heads'])}")
    loaded = {n: _load_entry(directory, n, config["heads"][n]) for n in wanted}  # all or nothing
    for n, head in loaded.items():
        _check_depth(pm, head, n, where, config["base"])
    reads = {n: recorded_adapter(config, n) for n in wanted}
    paths = {rel: _adapter_path(directory, rel, where) for rel in dict.fromkeys(reads.values()) if rel}
    if paths:
        pin(pm)  # heads attached already keep reading what they read now
    label = directory.resolve().name
    try:
        bound = {rel: load_adapter(pm, p, label if rel == "adapter" else f"{label}-{p.name}")
                 for rel, p in paths.items()}
    except Exception:
        prune(pm)  # all or nothing: no adapter stays loaded for heads that did not load
        raise
    here = str(directory.resolve())
    for n, head in loaded.items():
        pm.attach_head(n, head, activate=False)  # replaces a head of the same name
        pm.head_adapters[n] = bound.get(reads[n])
        pm.head_folders[n] = here
    if config["base"].get("fine_tuned"):
        pm.backbone_folder = here
    prune(pm)  # adapters only the replaced heads read
    active = config.get("active")
    pm.active = active if active in loaded else (pm.active or wanted[0])
    return wanted


def read_head(pm: "PreferenceModel", directory: str | os.PathLike, name: str | None = None, *,
              allow_base_mismatch: bool = False) -> RewardHead:
    """One head of ``directory`` as a detached :class:`RewardHead` (nothing attached, backbone untouched).

    ``name`` may be omitted when the folder holds one head. Heads of a LoRA or full fine-tuning
    run are refused: they read features of a changed backbone, which a bare head cannot bring.
    """
    directory = Path(directory)
    config = read_config(directory)
    where = str(directory / CONFIG)
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
    check_base(pm, config["base"], where, allow_base_mismatch, directory)
    head = _load_entry(directory, name, config["heads"][name])
    _check_depth(pm, head, name, where, config["base"])
    return head


def load_head(pm: "PreferenceModel", directory: str | os.PathLike, name: str, **kw: Any) -> RewardHead:
    """Load the single head ``name`` from ``directory`` onto ``pm`` and return it."""
    load_heads(pm, directory, names=[name], **kw)
    return pm.heads[name]
