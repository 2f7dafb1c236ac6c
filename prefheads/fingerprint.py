"""Weights fingerprints: cheap digests that tell two backbones' weights apart.

* :func:`weights_digest` is exact: sha256 of every byte of every tensor, with its name, shape
  and dtype, so any change of value or dtype gives a new digest (one embedding row retrained,
  a bfloat16 copy of a float32 checkpoint). The feature cache keys on it. About 0.5 s for a
  135M-parameter float32 model on CPU; taken once per model and reused until a weight changes
  (:func:`weights_version`).
* :func:`base_weights_digest` identifies the *base* weights a head reads features of: names,
  shapes and a strided sample of about 2048 values per tensor (about 10 ms for 135M parameters),
  peft adapter tensors left out (a LoRA-wrapped backbone digests as its plain base), values
  rounded to bfloat16 first, so one checkpoint loaded in float32 or bfloat16 digests the same.
  Head folders record it (see :mod:`prefheads.headio`); it tells bases apart, it does not prove
  two of them equal.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from prefheads.families import unwrap

SAMPLE = 2048


def _digest(tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> str:
    h = hashlib.sha256()
    for name, p in tensors:
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLE)
        sample = flat[::step]
        if dtype is not None and sample.is_floating_point():
            sample = sample.to(dtype)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


_EXACT: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[int, int], ...], str]]" = weakref.WeakKeyDictionary()


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """Every byte of ``t``'s values, whatever its dtype (read from the device where needed)."""
    flat = t.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return memoryview(flat.cpu().view(torch.uint8).numpy())


def weights_digest(model: nn.Module) -> str:
    """An exact digest of the weights: sha256 of every tensor's name, shape, dtype and bytes
    (memoised per model until a weight changes; meta tensors contribute their name and shape)."""
    inner = unwrap(model)
    version = weights_version(inner)
    hit = _EXACT.get(inner)
    if hit is not None and hit[0] == version:
        return hit[1]
    h = hashlib.sha256()
    for name, t in inner.state_dict().items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if not t.is_meta:
            h.update(_raw_bytes(t))
    digest = h.hexdigest()[:20]
    _EXACT[inner] = (version, digest)
    return digest


def _adapter_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of peft adapter tensors (LoRA ``lora_A`` / ``lora_B``..., saved copies)."""
    out = []
    for name, mod in model.named_modules():
        # peft tuner layers list their adapter sub-modules in ``adapter_layer_names``
        for attr in getattr(mod, "adapter_layer_names", ()):
            out.append(f"{name}.{attr}." if name else f"{attr}.")
        if hasattr(mod, "original_module") and hasattr(mod, "modules_to_save"):
            out.append(f"{name}.modules_to_save.")
    return out


def _base_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    skip = tuple(_adapter_prefixes(model))
    for name, t in state.items():
        if skip and name.startswith(skip):
            continue
        # peft keeps the wrapped layer as ``base_layer`` (``original_module`` for saved modules):
        # strip them so the names read as in the plain model
        yield name.replace(".base_layer.", ".").replace(".original_module.", "."), t


def base_weights_digest(model: nn.Module) -> str | None:
    """Digest of the base weights of ``model``: peft adapters left out, values read as bfloat16.

    Returns None when the weights cannot be compared this way (quantized or offloaded models).
    """
    inner = unwrap(model)
    # packed 4/8-bit weights hold no comparable values; offloaded ones hold none at all
    if getattr(inner, "hf_quantizer", None) is not None:
        return None
    if getattr(getattr(inner, "config", None), "quantization_config", None) is not None:
        return None
    state = inner.state_dict()
    if any(t.is_meta for t in state.values()):
        return None
    return _digest(_base_tensors(inner, state), torch.bfloat16)


def weights_version(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """A cheap key that changes whenever any weight of ``model`` is replaced or changed in place.

    Every in-place update (optimizer steps, ``copy_`` in ``load_state_dict``) bumps a tensor's
    version counter, and replacing a tensor changes its storage; digests cached under this key
    stay valid until then.
    """
    inner = unwrap(model)
    return tuple((t.data_ptr(), t._version) for t in (*inner.parameters(), *inner.buffers()))
