"""The paper's in-house decoder as a transformers model (structure mirrors ``modeling_llama``).

Layout (module names are what ``zoo/families/prefheads_inhouse.yaml`` hooks)::

    InHouseForCausalLM
      model: InHouseModel                 -> BaseModelOutputWithPast, width hidden_size
        embed_tokens   vocab -> embed_dim (tied with lm_head.decoder)
        project_in     embed_dim -> hidden_size (the first backbone layer)
        layers[i]      pre-norm blocks: RMSNorm, RoPE attention, RMSNorm, SwiGLU
        norm           final RMSNorm on hidden_size (the DPH hook point)
      lm_head: InHouseLMHead              hidden_size -> vocab logits
        project_out    hidden_size -> embed_dim (the last backbone layer)
        decoder        embed_dim -> vocab, tied

The down-projection lives inside ``lm_head`` so that ``get_output_embeddings()`` maps the
final-norm output straight to logits, as it does for every other family: prefheads' engine
(log-probs from the final-norm states) and ``generate`` need no special case, while the decoder
never pays for either projection when only reward states are read.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from prefheads.inhouse.configuration import InHouseConfig


class InHouseRMSNorm(LlamaRMSNorm):
    """RMSNorm (weight only, fp32 statistics)."""


class InHouseRotaryEmbedding(LlamaRotaryEmbedding):
    """RoPE cos/sin tables from ``config.rope_parameters`` (base 500000 by default)."""


class InHouseMLP(nn.Module):
    """SwiGLU FFN: ``down(act(gate(x)) * up(x))``, no biases."""

    def __init__(self, config: InHouseConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class InHouseAttention(nn.Module):
    """Multi-head causal self-attention with RoPE; the kernel comes from ``config._attn_implementation``."""

    def __init__(self, config: InHouseConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1  # full MHA; read by eager_attention_forward
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        width = config.num_attention_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden_states [B, T, hidden]`` -> ``([B, T, hidden], attention weights or None)``."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention(
            self, q, k, v, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(out), weights


class InHouseDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: InHouseConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = InHouseAttention(config, layer_idx)
        self.mlp = InHouseMLP(config)
        self.input_layernorm = InHouseRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = InHouseRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        h, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = hidden_states + h
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class InHousePreTrainedModel(PreTrainedModel):
    """Shared loading, init and attention-kernel flags."""

    # transformers reads this annotation as config_class: no `from __future__ import annotations` here
    config: InHouseConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InHouseDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": InHouseDecoderLayer, "attentions": InHouseAttention}


class InHouseModel(InHousePreTrainedModel):
    """Embeddings, up-projection, blocks, final norm: final-norm states of width ``hidden_size``."""

    def __init__(self, config: InHouseConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, self.padding_idx)
        self.project_in = nn.Linear(config.embed_dim, config.hidden_size, bias=False)
        self.layers = nn.ModuleList(InHouseDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = InHouseRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InHouseRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the decoder.

        Args:
            input_ids: ``[B, T]`` token ids (or give ``inputs_embeds``).
            attention_mask: ``[B, S]`` 1/0 mask over cached + new positions (any pattern), or 4D.
            position_ids: ``[B, T]`` RoPE positions; default: continue after the cache.
            cache: KV cache to extend (``past_key_values=`` is accepted too).
            inputs_embeds: ``[B, T, embed_dim]`` token embeddings, before the up-projection.
            use_cache: Create / return a cache.

        Returns:
            ``last_hidden_state [B, T, hidden_size]`` after ``norm`` (no down-projection), and ``cache``.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = self.project_in(inputs_embeds)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            seen = cache.get_seq_length() if cache is not None else 0
            T = hidden_states.shape[1]
            position_ids = torch.arange(seen, seen + T, device=hidden_states.device)[None]

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class InHouseLMHead(nn.Module):
    """Final-norm states to logits: ``decoder(project_out(h))``; ``decoder`` is the tied vocab matrix.

    ``weight`` and ``out_features`` forward to ``decoder`` so code that inspects an output embedding
    (tying, resizing, peft, quantizers) sees the vocab matrix.
    """

    def __init__(self, config: InHouseConfig) -> None:
        super().__init__()
        self.project_out = nn.Linear(config.hidden_size, config.embed_dim, bias=False)
        self.decoder = nn.Linear(config.embed_dim, config.vocab_size, bias=False)

    @property
    def weight(self) -> nn.Parameter:
        return self.decoder.weight

    @property
    def out_features(self) -> int:
        return self.decoder.out_features

    @out_features.setter
    def out_features(self, value: int) -> None:
        self.decoder.out_features = value

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[..., hidden_size]`` -> ``[..., vocab_size]``."""
        return self.decoder(self.project_out(hidden_states))


class InHouseForCausalLM(InHousePreTrainedModel, GenerationMixin):
    """The in-house decoder with its tied LM head; ``labels`` give the shifted next-token CE loss."""

    _tied_weights_keys = {"lm_head.decoder.weight": "model.embed_tokens.weight"}

    def __init__(self, config: InHouseConfig) -> None:
        super().__init__(config)
        self.model = InHouseModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = InHouseLMHead(config)
        self.post_init()

    def _get_resized_lm_head(self, old_lm_head: nn.Module, *args, **kwargs) -> nn.Module:
        # resize the vocab matrix only; the down-projection is unaffected by the vocabulary
        if isinstance(old_lm_head, InHouseLMHead):
            old_lm_head.decoder = super()._get_resized_lm_head(old_lm_head.decoder, *args, **kwargs)
            return old_lm_head
        return super()._get_resized_lm_head(old_lm_head, *args, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Decoder plus LM head; see :meth:`InHouseModel.forward` for the shared arguments.

        Args:
            labels: ``[B, T]`` targets aligned with ``input_ids`` (shifted inside; -100 ignored).
            logits_to_keep: Compute logits for only the last N positions (0: all) or given indices.
        """
        out: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=out.cache,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
