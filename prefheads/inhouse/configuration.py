"""Configuration of the paper's in-house 551M decoder (PAPER.md section 4)."""

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters


@strict
class InHouseConfig(PreTrainedConfig):
    r"""The in-house decoder: OPT-125m embeddings, an up-projection, 18 pre-norm blocks, a down-projection.

    Token embeddings (``vocab_size x embed_dim``, tied with the LM head) are projected up to
    ``hidden_size`` by the first backbone layer, run through ``num_hidden_layers`` pre-norm blocks
    (RMSNorm, multi-head causal self-attention with RoPE, SwiGLU FFN), normed by the final norm,
    and projected back down to ``embed_dim`` before the tied vocab projection. The defaults give
    the paper's model: 550,632,960 parameters with the tied embedding counted once (no biases).

    The paper's Transformer-XL recurrent memory (2048 extra tokens carried across segments) is
    omitted: this is a plain causal LM with a ``max_position_embeddings`` context, and a KV cache
    for decoding.

    Args:
        vocab_size: Vocabulary size (OPT-125m's 50272 before the ChatML extension).
        embed_dim: Width of the token embedding and of the tied LM head.
        hidden_size: Width of the residual stream, i.e. of the final-norm output DPH heads read.
        intermediate_size: SwiGLU inner width (gate and up projections each).
        num_hidden_layers: Number of decoder blocks.
        num_attention_heads: Attention heads (all full key/value heads, no GQA).
        head_dim: Per-head width; ``hidden_size // num_attention_heads`` when unset.
        hidden_act: FFN gate activation (``silu`` makes it SwiGLU).
        max_position_embeddings: Context length.
        initializer_range: Std of the normal weight init.
        rms_norm_eps: RMSNorm epsilon.
        use_cache: Return a KV cache by default.
        pad_token_id, bos_token_id, eos_token_id: OPT's special token ids.
        tie_word_embeddings: Tie the LM head's vocab matrix to the token embedding.
        rope_parameters: RoPE settings; ``rope_theta`` defaults to 500000 (``rope_theta=`` is
            accepted as a keyword too).
        attention_dropout: Dropout on attention probabilities while training.
    """

    model_type = "prefheads_inhouse"
    default_theta = 500_000.0  # the paper's RoPE base, used when no rope_theta is given
    keys_to_ignore_at_inference = ["cache"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 50272
    embed_dim: int = 768
    hidden_size: int = 1536
    intermediate_size: int = 4096
    num_hidden_layers: int = 18
    num_attention_heads: int = 24
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = True
    rope_parameters: RopeParameters | dict | None = None
    attention_dropout: float = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Part of ``@strict`` validation: the heads must tile the residual width."""
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) x head_dim ({self.head_dim}) must equal "
                f"hidden_size ({self.hidden_size})"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> "InHouseConfig":
        """A ~65k-parameter variant with the same layout, for tests and the CPU recipe."""
        kw: dict[str, Any] = dict(vocab_size=512, embed_dim=32, hidden_size=48, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
        kw.update(overrides)
        return cls(**kw)
