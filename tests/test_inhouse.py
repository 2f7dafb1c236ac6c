"""The in-house decoder (prefheads.inhouse): size, transformers interfaces, prefheads integration."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from conftest import make_tokenizer
from prefheads import PreferenceModel
from prefheads.families import profile_for
from prefheads.inhouse import InHouseConfig, InHouseForCausalLM, InHouseModel

PROMPTS = ["Question: what is the capital of France?"] * 3 + ["hello world", "The quick brown fox " * 6]
COMPS = ["Paris", "London is a big city", "yes", "no", "Answer: the lazy dog"]


def _expected_params(c: InHouseConfig) -> int:
    # tied embedding once; no biases anywhere; 2 RMSNorms per block + the final one
    block = 4 * c.hidden_size**2 + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    return (c.vocab_size * c.embed_dim + 2 * c.embed_dim * c.hidden_size
            + c.num_hidden_layers * block + c.hidden_size)


def _tiny(tok=None, seed: int = 0, **kw) -> InHouseForCausalLM:
    if tok is not None:
        kw.update(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                  eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    # a wider init than the default so greedy decoding does not collapse onto one token
    return InHouseForCausalLM(InHouseConfig.tiny(initializer_range=0.2, **kw)).eval()


def _ids(batch: int = 2, length: int = 9, vocab: int = 512, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_full_config_has_551m_parameters():
    cfg = InHouseConfig()
    assert (cfg.hidden_size, cfg.head_dim, cfg.rope_parameters["rope_theta"]) == (1536, 64, 500_000.0)
    with torch.device("meta"):
        model = InHouseForCausalLM(cfg)
    assert model.lm_head.decoder.weight is model.model.embed_tokens.weight
    n = sum(p.numel() for p in model.parameters())  # parameters() yields the tied matrix once
    assert n == _expected_params(cfg) == 550_632_960
    assert abs(n - 551_000_000) <= 2_000_000


@pytest.mark.slow
def test_full_model_instantiates_and_runs():
    model = InHouseForCausalLM(InHouseConfig()).eval()
    with torch.no_grad():
        logits = model(input_ids=_ids(1, 8, 50272)).logits
    assert logits.shape == (1, 8, 50272) and torch.isfinite(logits).all()


def test_layout_matches_the_zoo_profile():
    model = _tiny()
    prof = profile_for(model)
    assert (prof.model_type, prof.layers, prof.final_norm, prof.generic) == (
        "prefheads_inhouse", "model.layers", "model.norm", False)
    assert isinstance(model.base_model, InHouseModel)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(prof.lora_targets) <= names
    # the MLP's down_proj is the only down_proj a LoRA target list would hit
    assert not any(n.endswith("down_proj") and ".mlp." not in n for n, _ in model.named_modules())


def test_forward_shapes_loss_and_base_model_width():
    model = _tiny()
    ids = _ids()
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 9, 512)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, want, atol=1e-5)
    base = model.base_model(input_ids=ids)
    assert base.last_hidden_state.shape == (2, 9, 48)  # final-norm states, no down-projection
    assert torch.allclose(model.get_output_embeddings()(base.last_hidden_state), out.logits, atol=1e-6)


def test_cache_and_past_key_values_keywords_agree():
    model = _tiny()
    ids = _ids(1, 10)
    full = model(input_ids=ids).logits
    for kw in ("cache", "past_key_values"):  # the engine picks the name from the forward signature
        cache = DynamicCache()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # past_key_values: a deprecated alias
            model(input_ids=ids[:, :6], use_cache=True, **{kw: cache})
            step = model(input_ids=ids[:, 6:], use_cache=True, **{kw: cache}).logits
        assert torch.allclose(step, full[:, 6:], atol=1e-5), kw


def test_save_load_round_trip_through_auto_classes(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is InHouseConfig
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is InHouseForCausalLM
    assert loaded.lm_head.decoder.weight is loaded.model.embed_tokens.weight
    ids = _ids()
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert type(AutoModel.from_config(loaded.config)) is InHouseModel


def test_generate_with_cache_equals_greedy_without_cache():
    model = _tiny()
    ids = _ids(1, 7)
    got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         eos_token_id=None, pad_token_id=1)
    seq = ids
    for _ in range(6):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(got, seq)
    assert len(set(seq[0, 7:].tolist())) > 1  # the check is not vacuous


def test_resize_token_embeddings_keeps_tying_and_projection():
    model = _tiny()
    proj = model.lm_head.project_out.weight.clone()
    model.resize_token_embeddings(520)
    assert model.lm_head.decoder.weight is model.model.embed_tokens.weight
    assert model.lm_head.decoder.weight.shape == (520, 32) and model.config.vocab_size == 520
    assert torch.equal(model.lm_head.project_out.weight, proj)
    assert model(input_ids=_ids()).logits.shape == (2, 9, 520)


def test_preference_model_shared_prefix_is_exact_and_logprobs_match_a_plain_forward():
    tok = make_tokenizer()
    pm = PreferenceModel.from_backbone(_tiny(tok), tok)
    pm.add_head("h", "swiglu")
    assert pm.hidden_size == 48
    ref = pm.features(PROMPTS, COMPS, layers=[-1, 0], logprobs=True, shared_prefix=False)
    got = pm.features(PROMPTS, COMPS, layers=[-1, 0], logprobs=True, shared_prefix=True)
    for layer in ref.states:
        assert torch.allclose(got.states[layer], ref.states[layer], atol=1e-5), layer
    assert torch.allclose(got.logprob_sum, ref.logprob_sum, atol=1e-4)
    assert torch.equal(got.n_tokens, ref.n_tokens)
    # engine log-probs (get_output_embeddings on the final norm) equal the causal LM's own logits
    for i, item in enumerate(pm.encode(PROMPTS[:2], COMPS[:2])):
        logits = pm.backbone(input_ids=torch.tensor([item.ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        want = sum(lp[t - 1, item.ids[t]] for t in range(item.prompt_len, len(item.ids)))
        assert abs(float(want.detach()) - float(ref.logprob_sum[i])) < 1e-4
    assert pm.score(PROMPTS, COMPS).shape == (5,)
