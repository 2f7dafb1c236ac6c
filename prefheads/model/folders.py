"""Head folders of a :class:`~prefheads.model.PreferenceModel`: the backbone record it writes,
saving heads (with the adapters they read), loading them (all or nothing), and one bare head.

File formats and checks of the records are :mod:`prefheads.headio`; this module decides what a
folder's heads do to the model: which adapters it loads, which state each head reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from prefheads import headio
from prefheads.binding import adapter_digest, save_adapter
from prefheads.chat import ChatFormat
from prefheads.families import text_config, unwrap
from prefheads.heads import RewardHead
from prefheads.loading import quantization_of


class HeadFolders:
    """The head-folder half of :class:`~prefheads.model.PreferenceModel` (a mixin over its attributes)."""

    backbone: nn.Module
    chat: ChatFormat
    model_id: str
    revision: str | None
    hidden_size: int
    num_layers: int
    active: str | None
    fine_tuned: str | None
    backbone_folder: str | None
    head_folders: dict[str, str]
    head_adapters: dict[str, str | None]
    _base_digest: tuple[Any, str | None] | None

    def base_fingerprint(self) -> str | None:
        """Digest of the backbone's base weights (adapters left out), recorded in head folders.

        Computed once and reused until a weight changes (see
        :func:`prefheads.fingerprint.base_weights_digest`); None for quantized backbones.
        """
        from prefheads.fingerprint import base_weights_digest, weights_version

        key = weights_version(self.backbone)
        if self._base_digest is None or self._base_digest[0] != key:
            self._base_digest = (key, base_weights_digest(self.backbone))
        return self._base_digest[1]

    def base_record(self) -> dict[str, Any]:
        """What identifies this backbone in a head folder (``heads.json``'s ``base``).

        ``weights_digest`` fingerprints the base weights (adapters left out; for a full fine-tune,
        the tuned weights saved beside the heads), so the same weights match whatever path or hub
        id they were loaded from. ``quantization`` names a 4/8-bit load (``bnb-4bit-nf4``,
        ``bnb-8bit``; None for plain weights): a head reads the features of the backbone it was
        trained on, quantisation included.
        """
        cfg = unwrap(self.backbone).config
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "model_type": getattr(cfg, "model_type", None),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "vocab_size": getattr(text_config(self.backbone), "vocab_size", None),
            "weights_digest": self.base_fingerprint(),
            "weights_dtype": str(getattr(unwrap(self.backbone), "dtype", "")).removeprefix("torch.") or None,
            "quantization": quantization_of(self.backbone),
            "chat_mode": self.chat.mode,
            "reward_token": self.chat.reward_token,
            "reward_token_id": self.chat.reward_token_id,
            "template_fingerprint": self.chat.fingerprint,
            "adapter": None,  # set by headio.write_heads from what the heads read
            "fine_tuned": self.fine_tuned,
        }

    def save_heads(self, directory: str | os.PathLike, names: Sequence[str] | None = None) -> Path:
        """Write heads (all by default) to ``directory`` atomically, each LoRA head's adapter beside
        it; returns the folder (see :mod:`prefheads.headio`)."""
        names = list(names) if names is not None else self.head_names
        if not names:
            raise ValueError("no heads to save")
        out = Path(directory)
        reads = {name: self.adapter_of(name) for name in names}
        dirs = headio.adapter_dirs([a for a in reads.values() if a is not None])
        for a, rel in dirs.items():  # each head's adapter is saved before heads.json names it
            save_adapter(self.backbone, a, out / rel)
        return headio.write_heads(out, {n: self._get(n) for n in names}, base=self.base_record(), active=self.active,
                                  adapters={n: dirs.get(a) for n, a in reads.items()},
                                  adapter_digests={rel: adapter_digest(out / rel) for rel in dirs.values()})

    def load_heads(self, directory: str | os.PathLike, *, names: Sequence[str] | None = None,
                   allow_base_mismatch: bool = False) -> list[str]:
        """Load heads from ``directory`` (all or nothing); returns the names loaded (replacing same names).

        The folder must have been written for this backbone (:func:`prefheads.headio.check_base`)
        unless ``allow_base_mismatch``. Heads trained with LoRA are bound to their folder's
        adapter, loaded once under a name of its own beside the adapters already loaded; heads of
        the frozen backbone read the base model. Heads of a full fine-tune are refused beside
        heads of any other folder.
        """
        directory = Path(directory)
        config = headio.read_config(directory)
        where = str(directory / headio.CONFIG)
        self._check_one_backbone(directory, config)
        headio.check_base(self.base_record(), config["base"], where, allow_base_mismatch, directory)
        loaded = headio.read_heads(directory, config, names)
        for n, head in loaded.items():
            try:
                self.check_head(n, head)
            except ValueError as e:
                raise headio.HeadFileError(f"{where}: {e} (base {config['base'].get('model_id')!r})") from e
        reads = {n: headio.recorded_adapter(config, n) for n in loaded}
        paths = {rel: headio.adapter_path(directory, rel, where) for rel in dict.fromkeys(reads.values()) if rel}
        digests = _checked_adapter_digests(config, reads, paths)
        if paths:
            self.pin()  # heads attached already keep reading what they read now
        label = directory.resolve().name
        try:
            bound = {rel: self.load_adapter(p, label if rel == "adapter" else f"{label}-{p.name}", digests[rel])
                     for rel, p in paths.items()}
        except Exception:
            self.prune_adapters()  # all or nothing: no adapter stays loaded for heads that did not load
            raise
        here = str(directory.resolve())
        for n, head in loaded.items():
            self.attach_head(n, head, activate=False)  # replaces a head of the same name
            self.head_adapters[n] = bound.get(reads[n])
            self.head_folders[n] = here
        if config["base"].get("fine_tuned"):
            self.backbone_folder = here
        self.prune_adapters()  # adapters only the replaced heads read
        active = config.get("active")
        self.active = active if active in loaded else (self.active or next(iter(loaded)))
        return list(loaded)

    def read_head(self, directory: str | os.PathLike, name: str | None = None, *,
                  allow_base_mismatch: bool = False) -> RewardHead:
        """One head of ``directory`` as a detached :class:`RewardHead` (nothing attached, backbone untouched).

        ``name`` may be omitted when the folder holds one head. Heads of a LoRA or full
        fine-tuning run are refused: they read features of a changed backbone.
        """
        directory = Path(directory)
        config = headio.read_config(directory)
        where = str(directory / headio.CONFIG)
        name = headio.single_head(config, name, where)
        headio.check_base(self.base_record(), config["base"], where, allow_base_mismatch, directory)
        head = headio.read_heads(directory, config, [name])[name]
        try:
            self.check_head(name, head)
        except ValueError as e:
            raise headio.HeadFileError(f"{where}: {e} (base {config['base'].get('model_id')!r})") from e
        return head

    def _check_one_backbone(self, directory: Path, config: dict[str, Any]) -> None:
        """Heads of a full fine-tune read their own backbone: never beside heads of another folder."""
        here = str(directory.resolve())
        others = sorted({f for f in self.head_folders.values() if f != here})
        if config["base"].get("fine_tuned") and others:
            raise headio.HeadFileError(
                f"{directory}: its heads were trained with --mode full and read the fine-tuned backbone saved in "
                f"it, not the backbone the heads of {others[0]} read; load each folder into its own PreferenceModel")
        full = self.backbone_folder
        if full is not None and full != here and full in others:
            raise headio.HeadFileError(
                f"{directory}: cannot be loaded beside the heads of {full}, which were trained with --mode full "
                "and read the fine-tuned backbone saved there; load each folder into its own PreferenceModel")


def _checked_adapter_digests(config: dict[str, Any], reads: dict[str, str | None],
                             paths: dict[str, Path]) -> dict[str, str]:
    """The digest of each adapter folder (read once: loading it reuses it), which must be what
    ``heads.json`` recorded for the heads that read it.

    A save writes a head's adapter before it swaps ``heads.json``: one stopped in between leaves
    the previous heads beside a rewritten adapter, refused here rather than read as a mix.
    Folders written before digests were recorded are not checked.
    """
    digests = {rel: adapter_digest(p) for rel, p in paths.items()}
    for name, rel in reads.items():
        want = config["heads"][name].get("adapter_sha256") if rel else None
        if want is None:
            continue
        got = digests[rel]
        if got != want:
            raise headio.HeadFileError(
                f"{paths[rel]}: the adapter's files do not match what heads.json records for head {name!r} "
                f"(sha256 {got[:12]}…, recorded {want[:12]}…): a save into this folder stopped before it "
                "finished, or the files were changed; save the heads again")
    return digests
