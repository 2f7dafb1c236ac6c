"""On-disk feature cache for frozen backbones (safetensors).

A frozen backbone's reward-token hidden states depend only on the weights, the layer, and the
token ids (which already encode the data and the template). The key hashes the weights, the
token ids, the storage dtype and the backbone's quantisation (an 8-bit cache never serves a
4-bit run); one file holds every layer (and the completion log-probs) ever computed for those
rows, so a run that reads one layer is served by an earlier all-layer run,
and a run that asks for more adds what is missing to the same file. Later epochs, later runs and
every other head trained on the same data reuse one backbone pass. :func:`layer_features` reads
any set of layers this way.
Root: ``$PREFHEADS_CACHE/features`` (default ``~/.cache/prefheads``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from prefheads.chat import Encoded
from prefheads.engine import Features
from prefheads.families import unwrap
from prefheads.fingerprint import weights_digest
from prefheads.hooks import parse_layers
from prefheads.loading import cache_root, quantization_of

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


def feature_key(model: torch.nn.Module, items: Sequence[Encoded], dtype: str,
                extra: dict[str, Any] | None = None) -> str:
    """Cache key of the features of ``items`` (every layer), stored as ``dtype``.

    A quantized backbone adds its quantisation (``bnb-4bit-nf4``, ``bnb-8bit``) to the key; plain
    backbones keep the key they always had, so existing caches stay valid.
    """
    h = hashlib.sha256()
    cfg = unwrap(model).config
    quant = quantization_of(model)
    h.update(json.dumps({"model": getattr(cfg, "_name_or_path", ""), "type": getattr(cfg, "model_type", ""),
                         "weights": weights_digest(model), "dtype": dtype, "v": 3,
                         **({"quantization": quant} if quant else {}), **(extra or {})}, sort_keys=True).encode())
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

    def has(self, key: str) -> bool:
        """Whether an entry for ``key`` exists (its layers may still be a subset)."""
        return self.path(key).is_file()

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """Cached tensors (``layer_<i>``: ``[N, d]`` fp32, ``logprob_sum``, ``n_tokens``), or None
        on a miss or an unreadable file."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            t = load_file(str(p))
        except Exception:  # noqa: BLE001 - a damaged cache entry is a miss, rebuilt below
            return None
        return {k: (v.float() if k.startswith("layer_") else v) for k, v in t.items()}

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Store tensors atomically (hidden states in the cache dtype, log-probs as they are)."""
        self.root.mkdir(parents=True, exist_ok=True)
        dt = torch.float16 if self.dtype == "float16" else torch.float32
        out = {k: (v.detach().to(dt) if k.startswith("layer_") else v.detach()).contiguous().cpu()
               for k, v in tensors.items()}
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            save_file(out, tmp, metadata={"format": "pt"})
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path(key)


def cached_features(pm: PreferenceModel, prompts: Sequence, completions: Sequence[str], layers: Sequence[int],
                    cache: FeatureCache | None, items: Sequence[Encoded] | None = None,
                    logprobs: bool = False) -> tuple[Features, bool]:
    """Features of (prompts, completions) at ``layers`` through ``cache``; returns (features, hit).

    Args:
        pm: The model (frozen backbone).
        prompts: One prompt per completion.
        completions: The candidates.
        layers: Hidden states to return.
        cache: The cache, or None to run the backbone.
        items: The rows already tokenized by ``pm.encode`` (saves tokenizing them again).
        logprobs: Also return the completions' summed log-probs and token counts.

    Cold cache, warm cache and no cache give identical features: every path runs the same
    extraction, and a float16 cache hands back what it stored.
    """
    from prefheads.engine import extract

    items = list(items) if items is not None else pm.encode(prompts, completions)
    layers = list(layers)

    def run(want: list[int]) -> Features:
        return extract(pm.backbone, pm.profile, items, want, pad_id=pm.tokenizer.pad_token_id or 0,
                       logprobs=logprobs, shared_prefix=pm.shared_prefix, padding_side="right",
                       max_tokens=pm.max_tokens)

    if cache is None:
        return run(layers), False
    key = feature_key(pm.backbone, items, cache.dtype)
    got = cache.load(key) or {}
    have = {int(k.removeprefix("layer_")) for k in got if k.startswith("layer_")}
    hit = set(layers) <= have and (not logprobs or "logprob_sum" in got)
    if not hit:
        fresh = run(layers)
        got.update({f"layer_{l}": v for l, v in fresh.states.items()})
        if fresh.logprob_sum is not None:
            got.update(logprob_sum=fresh.logprob_sum, n_tokens=fresh.n_tokens)
        cache.save(key, got)
        if cache.dtype == "float16":  # identical to what a later cache hit returns
            got.update({f"layer_{l}": v.half().float() for l, v in fresh.states.items()})
    feats = Features({l: got[f"layer_{l}"] for l in layers},
                     got["logprob_sum"] if logprobs else None,
                     got["n_tokens"] if logprobs else got.get("n_tokens", torch.zeros(len(items), dtype=torch.long)))
    return feats, hit


def layer_features(pm: PreferenceModel, prompts: Sequence, completions: Sequence[str],
                   layers: str | Sequence[int] | None = "all", cache: FeatureCache | None = None) -> dict[int, torch.Tensor]:
    """Reward-token hidden states of every requested layer from ONE backbone pass.

    Args:
        pm: The model (its backbone runs as it stands).
        prompts: One prompt per completion.
        completions: Assistant texts.
        layers: Layer spec (see :func:`prefheads.hooks.parse_layers`).
        cache: The feature cache to read and write, or None.

    Returns:
        ``{layer: [N, d]}`` fp32.
    """
    return cached_features(pm, prompts, completions, parse_layers(layers, pm.num_layers), cache)[0].states
