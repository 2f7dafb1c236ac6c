"""On-disk feature cache for frozen backbones (safetensors).

A frozen backbone's reward-token hidden states depend only on the weights, the layer, and the
token ids (which already encode the data and the template). The key hashes exactly those, plus
the storage dtype, so later epochs, later runs and every other head trained on the same data
reuse one backbone pass. Root: ``$PREFHEADS_CACHE/features`` (default ``~/.cache/prefheads``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from prefheads.chat import Encoded
from prefheads.families import unwrap
from prefheads.fingerprint import weights_digest
from prefheads.loading import cache_root


def feature_key(model: torch.nn.Module, items: Sequence[Encoded], layers: Sequence[int], dtype: str,
                extra: dict[str, Any] | None = None) -> str:
    """Cache key of the features of ``items`` at ``layers``, stored as ``dtype``."""
    h = hashlib.sha256()
    cfg = unwrap(model).config
    h.update(json.dumps({"model": getattr(cfg, "_name_or_path", ""), "type": getattr(cfg, "model_type", ""),
                         "weights": weights_digest(model), "layers": sorted(layers), "dtype": dtype,
                         **(extra or {})}, sort_keys=True).encode())
    for it in items:
        h.update(len(it.ids).to_bytes(4, "little"))
        h.update(torch.tensor(it.ids, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()[:32]


class FeatureCache:
    """Read/write cached feature tensors by key.

    Args:
        root: Folder (default ``cache_root()/features``).
        dtype: ``"float32"`` or ``"float16"`` storage (stated in the key).
    """

    def __init__(self, root: str | os.PathLike | None = None, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"feature cache dtype must be float32 or float16, got {dtype!r}")
        self.root = Path(root) if root else cache_root() / "features"
        self.dtype = dtype

    def path(self, key: str) -> Path:
        """File of ``key``."""
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> dict[int, torch.Tensor] | None:
        """Cached ``{layer: [N, d]}`` (fp32), or None on a miss or an unreadable file."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            t = load_file(str(p))
        except Exception:  # noqa: BLE001 - a damaged cache entry is a miss, rebuilt below
            return None
        return {int(k.removeprefix("layer_")): v.float() for k, v in t.items()}

    def save(self, key: str, states: dict[int, torch.Tensor]) -> Path:
        """Store ``{layer: [N, d]}`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        dt = torch.float16 if self.dtype == "float16" else torch.float32
        tensors = {f"layer_{l}": v.detach().to(dt).contiguous().cpu() for l, v in states.items()}
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"format": "pt"})
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path(key)


def cached_features(pm: Any, prompts: Sequence, completions: Sequence[str], layers: Sequence[int],
                    cache: FeatureCache | None, items: Sequence[Encoded] | None = None
                    ) -> tuple[dict[int, torch.Tensor], bool]:
    """Features of (prompts, completions) at ``layers`` through ``cache``; returns (states, hit).

    ``items`` are the rows already tokenized by ``pm.encode`` (saves tokenizing them again).
    Cold cache, warm cache and no cache give identical features: every path runs the same
    extraction, and a float16 cache hands back what it stored.
    """
    from prefheads.engine import extract

    items = list(items) if items is not None else pm.encode(prompts, completions)

    def run() -> dict[int, torch.Tensor]:
        return extract(pm.backbone, pm.profile, items, list(layers), pad_id=pm.tokenizer.pad_token_id or 0,
                       shared_prefix=pm.shared_prefix, padding_side="right", max_tokens=pm.max_tokens).states

    if cache is None:
        return run(), False
    key = feature_key(pm.backbone, items, layers, cache.dtype)
    got = cache.load(key)
    if got is not None and all(l in got for l in layers):
        return got, True
    states = run()
    cache.save(key, states)
    if cache.dtype == "float16":
        states = {l: v.half().float() for l, v in states.items()}  # identical to a later cache hit
    return states, False
