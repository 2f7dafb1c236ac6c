"""``PreferenceModel``: a causal LM plus named Direct Preference Heads.

The backbone is never modified: hidden states are read through scoped forward hooks, so the
LM's own logits and generations stay bit-identical with heads attached. The model owns what it
holds: its heads, the peft adapters loaded into its backbone and which head reads which
(:mod:`.states`), and what its head folders record (:mod:`.folders`); files are read and written
by :mod:`prefheads.headio`, which never touches a model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prefheads import headio
from prefheads.binding import active_adapter, is_peft
from prefheads.chat import ChatFormat, Encoded, detect_format, encode
from prefheads.engine import Features, extract
from prefheads.families import FamilyProfile, hidden_width, profile_for, text_config, unwrap
from prefheads.heads import HeadConfig, RewardHead, check_head_name
from prefheads.hooks import check_layer, hook_module, num_layers
from prefheads.model.folders import HeadFolders
from prefheads.model.states import BackboneStates
from prefheads.poolers import pooler_defaults
from prefheads.types import Prompt, broadcast


class PreferenceModel(BackboneStates, HeadFolders, nn.Module):
    """A causal LM with named reward heads read from its last-token hidden state.

    Build it with :meth:`from_backbone` (a model you already hold), :meth:`from_pretrained`
    (hub id, folder, GGUF file, or the bundled SmolLM2) or :meth:`from_heads` (a head folder on
    the backbone it was trained on).

    Heads of several folders share one backbone: heads trained on the frozen backbone read the
    base model, each LoRA-trained head reads its own named peft adapter (loaded once per folder),
    and scoring runs one pass per group of heads that read the same state (:meth:`head_groups`,
    :mod:`prefheads.binding`). A head is *bound* to its state when it is loaded from a folder, or
    attached while the backbone already carries adapters; a head attached to a plain backbone
    stays unbound and reads the backbone as it stands (so a LoRA run's head follows the adapter
    the run adds after the head). Before adapters change, unbound heads are bound to what they
    read at that moment (:meth:`pin`), so nothing already attached changes what it reads.

    Attributes:
        backbone: The wrapped causal LM (its weights never modified; a ``peft.PeftModel`` once a
            LoRA head folder is loaded).
        tokenizer: Its tokenizer.
        heads: ``nn.ModuleDict`` of :class:`RewardHead` by name.
        active: Name of the head :meth:`score` uses by default.
        layer: Default hidden state new heads read (-1: after the final norm).
        chat: The detected :class:`ChatFormat` (reward token, template fingerprint).
        head_adapters: Head -> the adapter it reads (None: the base model); see :meth:`adapter_of`.
        head_folders: Head -> the folder it was loaded from.
        adapter_folders: Adapter -> the folder it was loaded from.
        adapter_digests: Adapter -> sha256 of its files (an adapter is loaded once).
        backbone_folder: The head folder of a full fine-tune whose backbone this is, or None.
        fine_tuned: Where :meth:`save_heads` records this backbone is saved inside the head
            folder (a full fine-tune saves it there, e.g. ``backbone``), or None for a base model.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        layer: int = -1,
        profile: FamilyProfile | None = None,
        chat: ChatFormat | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.profile = profile or profile_for(backbone)
        self.num_layers = num_layers(backbone, self.profile)
        self.layer = check_layer(layer, self.num_layers)
        hook_module(backbone, self.profile, self.layer)  # fail now, not at first score
        self.chat = chat or detect_format(tokenizer, self.profile.end_of_turn)
        cfg = unwrap(backbone).config
        self.model_id = model_id or getattr(cfg, "_name_or_path", None) or type(unwrap(backbone)).__name__
        self.revision = revision
        self._base_digest: tuple[Any, str | None] | None = None  # (weights_version, digest)
        text = text_config(backbone)  # a multimodal wrapper's language model (Gemma-3 4B and up)
        self.hidden_size = hidden_width(text)
        self.max_length = max_length or getattr(text, "max_position_embeddings", None)
        self.heads = nn.ModuleDict()
        self.active: str | None = None
        # the backbone state each head reads (see prefheads.binding): head -> adapter name, None
        # for the base model; unbound heads read the backbone as it stands
        self.head_adapters: dict[str, str | None] = {}
        self.head_folders: dict[str, str] = {}  # head -> the folder it was loaded from
        self.adapter_folders: dict[str, str] = {}  # adapter -> the folder it was loaded from
        self.adapter_digests: dict[str, str] = {}  # adapter -> sha256 of its files (loaded once)
        self.backbone_folder: str | None = None  # the full fine-tune folder whose backbone this is
        self.fine_tuned: str | None = None  # where a full fine-tune's backbone is saved beside its heads
        self.shared_prefix = True
        self.max_tokens = 4096
        # what a sequence longer than max_length loses: left | right | error (see chat.encode)
        self.truncation = "left"

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_backbone(cls, model: nn.Module, tokenizer: Any, layer: int = -1, **kwargs: Any) -> "PreferenceModel":
        """Wrap a causal LM (and tokenizer) the caller already holds.

        Args:
            model: Any Hugging Face causal LM (peft-wrapped models too).
            tokenizer: Its tokenizer.
            layer: Default hidden state for new heads (-1: after the final norm, i: block i).
            **kwargs: ``model_id``, ``revision``, ``max_length``.
        """
        return cls(model, tokenizer, layer=layer, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike | None = None,
        *,
        heads: str | os.PathLike | None = None,
        revision: str | None = None,
        layer: int = -1,
        dtype: torch.dtype | str = torch.float32,
        trust_remote_code: bool = False,
        **load_kwargs: Any,
    ) -> "PreferenceModel":
        """Load a backbone (hub id, folder, GGUF, or ``None`` for the bundled SmolLM2).

        Args:
            base: What to load; ``None`` means the bundled SmolLM2-135M-Instruct.
            heads: Optional head folder to load onto it.
            revision: Hub revision.
            layer: Default hidden state for new heads.
            dtype: Backbone weight dtype.
            trust_remote_code: Allow model code from the hub (off unless asked).
            **load_kwargs: ``device_map``, ``quantization_config``.
        """
        from prefheads.loading import load_backbone

        model, tok, model_id = load_backbone(base, revision=revision, dtype=dtype,
                                             trust_remote_code=trust_remote_code, **load_kwargs)
        pm = cls(model, tok, model_id=model_id, revision=revision, layer=layer)
        if heads is not None:
            pm.load_heads(heads)
        return pm

    @classmethod
    def from_heads(cls, heads: str | os.PathLike | Sequence[str | os.PathLike], base: str | os.PathLike | None = None,
                   *, names: Sequence[str] | None = None, allow_base_mismatch: bool = False,
                   load_in_4bit: bool | None = None, load_in_8bit: bool | None = None,
                   **load_kwargs: Any) -> "PreferenceModel":
        """Head folders on the backbone the first was trained on, every folder's heads loaded.

        Args:
            heads: A head folder, or several (their heads share the backbone).
            base: The backbone instead (hub id, folder, GGUF); default: the first folder's
                fine-tuned backbone, else its base (see :func:`prefheads.headio.heads_base`).
            names: Load only these heads (of every folder).
            allow_base_mismatch: Load heads trained on another base.
            load_in_4bit, load_in_8bit: Quantize the backbone so (bitsandbytes); with neither
                given, as the first folder's base was when its heads were trained.
            **load_kwargs: Passed to :meth:`from_pretrained` (``dtype``, ``device_map``...).
        """
        from prefheads.loading import backbone_quantization, quantization_kwargs

        folders = [heads] if isinstance(heads, (str, os.PathLike)) else list(heads)
        quant = backbone_quantization(load_in_4bit, load_in_8bit, headio.heads_quantization(folders[0]))
        pm = cls.from_pretrained(base if base is not None else headio.heads_base(folders[0]),
                                 **{**quantization_kwargs(*quant), **load_kwargs})
        for folder in folders:
            pm.load_heads(folder, names=names, allow_base_mismatch=allow_base_mismatch)
        active = headio.read_config(folders[0]).get("active")
        pm.active = active if active in pm.heads else pm.head_names[0]  # the first folder's default
        return pm

    # ----------------------------------------------------------------- heads
    def add_head(self, name: str, pooler: str = "swiglu", *, activate: bool = True,
                 layer: int | None = None, **cfg: Any) -> RewardHead:
        """Create a new head named ``name``.

        Args:
            name: Head name (e.g. the task).
            pooler: Registered pooler name.
            activate: Make it the active head.
            layer: Hidden state it reads (default: the model's ``layer``).
            **cfg: Other :class:`HeadConfig` fields (``dropout``, ``bias``, ``pooler_kwargs``...).
        """
        check_head_name(name)
        if name in self.heads:
            raise ValueError(f"a head named {name!r} exists already; remove_head it first")
        kw = dict(cfg.pop("pooler_kwargs", {}) or {})
        for k, v in pooler_defaults(pooler, self.hidden_size, text_config(self.backbone), **kw).items():
            kw.setdefault(k, v)
        config = HeadConfig(pooler=pooler, hidden_size=self.hidden_size, layer=self.layer if layer is None else layer,
                            pooler_kwargs=kw, num_base_layers=self.num_layers, **cfg)
        return self.attach_head(name, RewardHead(config), activate=activate)

    def check_head(self, name: str, head: RewardHead) -> None:
        """Refuse a head this backbone cannot feed: another width, a layer it lacks (LayerError),
        or a layer mix built for a backbone of another depth; and a name no head may have
        (:func:`prefheads.heads.check_head_name`)."""
        check_head_name(name)
        c = head.config
        if c.hidden_size != self.hidden_size:
            raise ValueError(f"head {name!r} reads width {c.hidden_size}, the backbone has {self.hidden_size}")
        # a layer mix is tied to its backbone's depth: never loadable elsewhere, override or not
        if c.layers and c.num_base_layers not in (None, self.num_layers):
            raise ValueError(f"head {name!r} mixes layers of a {c.num_base_layers}-block backbone; "
                             f"this one has {self.num_layers} blocks")
        for l in c.reads:
            check_layer(l, self.num_layers)

    def attach_head(self, name: str, head: RewardHead, *, activate: bool = True) -> RewardHead:
        """Attach an existing :class:`RewardHead` (:meth:`check_head` first)."""
        self.check_head(name, head)
        dev = next(unwrap(self.backbone).parameters()).device
        self.heads[name] = head.to(dev)
        self.head_adapters.pop(name, None)
        self.head_folders.pop(name, None)
        if is_peft(self.backbone):  # adapters are loaded: the new head reads the one active now
            self.head_adapters[name] = active_adapter(self.backbone)
        if activate or self.active is None:
            self.active = name
        return head

    def set_head(self, name: str) -> None:
        """Make ``name`` the active head."""
        self._get(name)
        self.active = name

    def remove_head(self, name: str) -> RewardHead:
        """Detach and return head ``name``."""
        head = self._get(name)
        del self.heads[name]
        self.head_adapters.pop(name, None)
        self.head_folders.pop(name, None)
        if self.active == name:
            self.active = next(iter(self.heads), None)
        self.prune_adapters()
        return head

    @property
    def head_names(self) -> list[str]:
        """Names of the attached heads."""
        return list(self.heads)

    def _get(self, name: str | None) -> RewardHead:
        name = name or self.active
        if name is None:
            raise ValueError("no head attached: add_head(...) or load_heads(...) first")
        if name not in self.heads:
            raise KeyError(f"no head named {name!r}; heads: {self.head_names}")
        return self.heads[name]

    # ----------------------------------------------------------------- encoding & features
    def encode(self, prompts: Sequence[str | Prompt], completions: Sequence[str]) -> list[Encoded]:
        """Tokenize aligned prompts and completions (one prompt per completion)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return [encode(self.tokenizer, self.chat, p, c, max_length=self.max_length, name=f"item {i}",
                       truncation=self.truncation)
                for i, (p, c) in enumerate(zip(prompts, completions))]

    def features(self, prompts: Sequence[str | Prompt], completions: Sequence[str], *,
                 layers: Sequence[int] | None = None, logprobs: bool = False,
                 shared_prefix: bool | None = None, padding_side: str = "right",
                 grad: bool = False, raw: bool = False) -> Features:
        """Hidden states at each reward token (and optionally completion log-probs).

        The backbone runs as it stands (its active adapter, if it carries adapters); inside
        ``with pm.reading(adapter):`` it runs in that state (None: the base model).

        Args:
            prompts: One prompt per completion (repeat a prompt for several candidates).
            completions: Assistant texts.
            layers: Hidden states to read (default: those the heads read, else ``layer``).
            logprobs: Also compute summed completion log-probs (costs the vocab projection
                on completion tokens only).
            shared_prefix: Encode each distinct prompt once (default: ``self.shared_prefix``).
            padding_side: Padding for full encoding.
            grad: Keep the autograd graph through the backbone (LoRA / full training).
            raw: Also score the completions in the raw view (a second, log-prob-only pass:
                :mod:`prefheads.rawtext`), for heads that add ``raw:`` scores.
        """
        if layers is None:
            layers = self.layers_for(self.head_names) or [self.layer]
        items = self.encode(prompts, completions)
        feats = extract(self.backbone, self.profile, items, list(layers),
                        pad_id=self.tokenizer.pad_token_id or 0, logprobs=logprobs,
                        shared_prefix=self.shared_prefix if shared_prefix is None else shared_prefix,
                        padding_side=padding_side, max_tokens=self.max_tokens, grad=grad)
        if raw:
            from prefheads.rawtext import raw_logprobs

            feats.raw_logprob_sum, feats.raw_n_tokens = raw_logprobs(
                self.backbone, self.profile, self.tokenizer, prompts, completions,
                max_length=self.max_length, max_tokens=self.max_tokens, truncation=self.truncation)
        return feats

    def layers_for(self, heads: Sequence[str]) -> list[int]:
        """Sorted hidden states the given heads read (one backbone pass serves them all)."""
        return sorted({l for h in heads for l in self._get(h).config.reads})

    # ----------------------------------------------------------------- scoring
    def forward(self, states: Features | dict[int, torch.Tensor] | torch.Tensor, head: str | None = None,
                scores: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards ``[N]`` of head ``head`` (default: active) from hidden states.

        Args:
            states: :class:`Features`, a ``{layer: [N, d]}`` dict, or a ``[N, d]`` tensor.
            head: Head name (default: the active head).
            scores: ``[N]`` (``[N, S]``) the LM's score(s) a log-prob-aware head adds (:meth:`lm_scores`).
        """
        h = self._get(head)
        if isinstance(states, Features):
            states = states.states
        x = h.select(states) if isinstance(states, dict) else states
        return h(x.to(h.input_mean.device), scores)

    def needs_logprobs(self, heads: Sequence[str]) -> bool:
        """Whether any of ``heads`` adds the LM's own score (its pass must compute log-probs)."""
        return any(self._get(n).uses_scores for n in heads)

    def needs_raw_view(self, heads: Sequence[str]) -> bool:
        """Whether any of ``heads`` adds a ``raw:`` score (``features(..., raw=True)``)."""
        return any(self._get(n).uses_raw_view for n in heads)

    def lm_scores(self, feats: Features, completions: Sequence[str], head: str | None = None) -> torch.Tensor | None:
        """The score(s) head ``head`` adds (``[N]``, or ``[N, S]`` for several), from a pass that
        computed log-probs (and the raw view, for ``raw:`` scores); None if it adds none."""
        from prefheads.lmscores import chars_of, score_table

        h = self._get(head)
        if not h.uses_scores:
            return None
        try:
            return score_table(h.config.score_input, feats, chars_of(completions))
        except ValueError as e:
            raise ValueError(f"head {head or self.active!r} adds the LM's {h.config.score_input}: {e}") from None

    @torch.no_grad()
    def score(self, prompts: str | Prompt | Sequence[str | Prompt], completions: str | Sequence[str],
              head: str | None = None, **kw: Any) -> torch.Tensor:
        """Rewards ``[N]`` (fp32) of the given head for each (prompt, completion); a single prompt
        with several completions scores them as candidates of that prompt."""
        prompts, completions = broadcast(prompts, completions)
        h = self._get(head)
        was = h.training
        h.eval()
        try:
            with self.reading(self.adapter_of(head or self.active)):
                feats = self.features(prompts, completions, layers=h.config.reads,
                                      logprobs=kw.pop("logprobs", False) or h.uses_scores,
                                      raw=kw.pop("raw", False) or h.uses_raw_view, **kw)
            return self(feats, head, self.lm_scores(feats, completions, head))
        finally:
            h.train(was)

    @torch.no_grad()
    def score_all_heads(self, prompts: str | Prompt | Sequence[str | Prompt],
                        completions: str | Sequence[str], **kw: Any) -> dict[str, torch.Tensor]:
        """Every head's rewards: ``{name: [N]}``; ONE backbone pass serves every head that reads
        the same state (the base model, or one adapter): one per group of :meth:`head_groups`."""
        if not self.heads:
            raise ValueError("no head attached")
        prompts, completions = broadcast(prompts, completions)
        logprobs = kw.pop("logprobs", False)
        out = {}
        for adapter, names in self.head_groups():
            with self.reading(adapter):
                feats = self.features(prompts, completions, layers=self.layers_for(names),
                                      logprobs=logprobs or self.needs_logprobs(names),
                                      raw=self.needs_raw_view(names), **kw)
            for name in names:
                h = self.heads[name]
                was = h.training
                h.eval()
                out[name] = self(feats.states, name, self.lm_scores(feats, completions, name))
                h.train(was)
        return {name: out[name] for name in self.heads}

    def detach(self) -> nn.Module:
        """Drop every head and return the backbone, untouched and hook-free (adapters stay loaded)."""
        self.heads = nn.ModuleDict()
        self.active = None
        self.head_adapters.clear()
        self.head_folders.clear()
        return self.backbone
