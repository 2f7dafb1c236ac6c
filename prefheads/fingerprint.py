"""Weights fingerprints: cheap digests that tell two backbones' weights apart.

Both digests hash every tensor's name, shape and a strided sample of about 2048 of its values
(about 10 ms for a 135M-parameter model on CPU), so they are cheap enough to take at every save.

* :func:`weights_digest` is exact: any change of value or dtype gives a new digest. The feature
  cache keys on it.
* :func:`base_weights_digest` identifies the *base* weights a head reads features of: peft
  adapter tensors are left out (a LoRA-wrapped backbone digests as its plain base), and values
  are rounded to bfloat16 first, so one checkpoint loaded in float32 or bfloat16 digests the
  same. Head folders record it (see :mod:`prefheads.headio`).
"""

from __future__ import annotations

import hashlib
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


def weights_digest(model: nn.Module) -> str:
    """A cheap exact digest of the weights: names, shapes and a strided sample of every tensor."""
    return _digest(unwrap(model).state_dict().items())


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
