"""PreferenceModel on tiny random backbones of every family: hooks, exactness, invariances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_backbone, make_tokenizer
from prefheads import PreferenceModel
from prefheads.chat import ChatFormat, RewardTokenError, encode
from prefheads.families import get_module, unwrap
from prefheads.headio import HeadFileError

PROMPTS = ["Question: what is the capital of France?"] * 3 + ["hello world", "The quick brown fox " * 6]
COMPS = ["Paris", "London is a big city", "yes", "no", "Answer: the lazy dog"]


def _pm(family, **kw):
    bb, tok = make_backbone(family)
    pm = PreferenceModel.from_backbone(bb, tok, **kw)
    return pm


def _hooked(pm):
    inner = unwrap(pm.backbone)
    mods = [get_module(inner, pm.profile.final_norm), *get_module(inner, pm.profile.layers)]
    return sum(len(m._forward_hooks) for m in mods)


def test_shared_prefix_equals_full_and_padding_invariant(family):
    pm = _pm(family)
    ref = pm.features(PROMPTS, COMPS, layers=[-1, 0, 2], logprobs=True, shared_prefix=False)
    for kw in ({"shared_prefix": True}, {"shared_prefix": False, "padding_side": "left"}):
        got = pm.features(PROMPTS, COMPS, layers=[-1, 0, 2], logprobs=True, **kw)
        for layer in ref.states:
            assert torch.allclose(got.states[layer], ref.states[layer], atol=1e-5), (family, kw, layer)
        assert torch.allclose(got.logprob_sum, ref.logprob_sum, atol=1e-4)
        assert torch.equal(got.n_tokens, ref.n_tokens)


def test_batch_size_invariance(family):
    pm = _pm(family)
    pm.add_head("h", "swiglu")
    big = pm.score(PROMPTS, COMPS)
    pm.max_tokens = 1  # one sequence (or one prompt group) per forward
    small = pm.score(PROMPTS, COMPS)
    assert torch.allclose(big, small, atol=1e-5)
    singles = torch.cat([pm.score(p, c) for p, c in zip(PROMPTS, COMPS)])
    assert torch.allclose(big, singles, atol=1e-5)


# docs/faq.md states this bound, measured on SmolLM2: |Δr| <= BATCHING_TOL * max(1, |r|)
BATCHING_TOL = 1e-4
FAQ = Path(__file__).resolve().parents[1] / "docs" / "faq.md"


def test_rewards_agree_across_batchings_within_the_stated_tolerance(family):
    pm = _pm(family)
    head = pm.add_head("h", "swiglu", dropout=0.0)
    pm.max_tokens = 100_000
    # a trained head's shape: standardised inputs, weights grown until rewards reach tens
    head.fit_standardizer(pm.features(PROMPTS, COMPS, shared_prefix=False).states[-1])
    with torch.no_grad():
        head.pooler.up.weight.mul_(25)
        head.reward.weight.mul_(100)
    ref = pm.score(PROMPTS, COMPS, shared_prefix=False)
    assert float(ref.abs().max()) > 1
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(PROMPTS):
        groups.setdefault(p, []).append(i)

    def per_prompt(**kw):
        out = torch.empty(len(COMPS))
        for p, idx in groups.items():
            out[idx] = pm.score(p, [COMPS[i] for i in idx], **kw)
        return out

    got = {}
    for max_tokens in (1, 100_000):
        pm.max_tokens = max_tokens
        for sp in (True, False):
            got[max_tokens, sp, "all"] = pm.score(PROMPTS, COMPS, shared_prefix=sp)
            got[max_tokens, sp, "per prompt"] = per_prompt(shared_prefix=sp)
            got[max_tokens, sp, "per candidate"] = torch.cat(
                [pm.score(p, c, shared_prefix=sp) for p, c in zip(PROMPTS, COMPS)])
    got["left padding"] = pm.score(PROMPTS, COMPS, shared_prefix=False, padding_side="left")
    tol = BATCHING_TOL * max(1.0, float(ref.abs().max()))
    for how, r in got.items():
        assert float((r - ref).abs().max()) <= tol, (family, how)
        for idx in groups.values():  # rankings agree except between near-ties
            top2 = ref[idx].topk(min(2, len(idx))).values
            if len(idx) < 2 or float(top2[0] - top2[1]) > 2 * tol:
                assert int(r[idx].argmax()) == int(ref[idx].argmax()), (family, how)


def test_faq_states_the_tested_batching_tolerance():
    text = " ".join(FAQ.read_text().split())
    assert BATCHING_TOL == 1e-4 and "within **1e-4 × max(1, |r|)**" in text
    assert "within 1e-5 under" not in text


def test_logprobs_match_a_plain_forward(family):
    pm = _pm(family)
    feats = pm.features(PROMPTS[:2], COMPS[:2], logprobs=True)
    for i, item in enumerate(pm.encode(PROMPTS[:2], COMPS[:2])):
        logits = pm.backbone(input_ids=torch.tensor([item.ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        want = sum(lp[t - 1, item.ids[t]] for t in range(item.prompt_len, len(item.ids)))
        assert abs(float(want.detach()) - float(feats.logprob_sum[i])) < 1e-4


def test_reward_is_read_at_the_last_end_of_turn_token(tok):
    pm = _pm("llama")
    item = pm.encode(["hi"], ["a reply"])[0]
    assert item.ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert item.ids.count(item.ids[-1]) == 2  # the user turn's <|im_end|> and the final one
    # the final state equals a plain forward's final-norm output at that position
    out = pm.backbone(input_ids=torch.tensor([item.ids]), output_hidden_states=True)
    want = out.hidden_states[-1][0, -1]
    got = pm.features(["hi"], ["a reply"]).states[-1][0]
    assert torch.allclose(got, want, atol=1e-5)


def test_logits_bit_identical_with_heads_attached():
    bb, tok = make_backbone("llama")
    ids = torch.tensor([tok("hello world, the quick brown fox")["input_ids"]])
    before = bb(input_ids=ids).logits.clone()
    pm = PreferenceModel.from_backbone(bb, tok)
    pm.add_head("a", "swiglu")
    pm.add_head("b", "bert")
    pm.score_all_heads("hi", ["x", "y"])
    assert torch.equal(pm.backbone(input_ids=ids).logits, before)
    assert _hooked(pm) == 0  # no hook outlives a scoring call
    assert pm.detach() is bb


def test_hooks_removed_when_forward_raises():
    pm = _pm("llama")
    pm.add_head("a", "identity")
    block = get_module(unwrap(pm.backbone), pm.profile.layers)[1]
    handle = block.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        pm.score("hi", ["x"])
    handle.remove()
    assert _hooked(pm) == 0
    pm.score("hi", ["x"])  # still usable


def test_no_vocab_projection_when_only_rewards_needed():
    pm = _pm("llama")
    pm.add_head("a", "swiglu")
    calls = []
    h = unwrap(pm.backbone).get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    pm.score(PROMPTS, COMPS)
    assert calls == []
    pm.features(PROMPTS, COMPS, logprobs=True)
    assert calls  # log-probs do need it
    h.remove()


def test_early_exit_stops_after_the_deepest_block_and_is_exact():
    pm = _pm("llama")
    pm.add_head("mid", "identity", layer=0)
    ran = []
    blocks = get_module(unwrap(pm.backbone), pm.profile.layers)
    hs = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(blocks)]
    r = pm.score(PROMPTS, COMPS)
    assert set(ran) == {0}
    for h in hs:
        h.remove()
    full = pm.backbone(input_ids=torch.tensor([pm.encode(PROMPTS[:1], COMPS[:1])[0].ids]), output_hidden_states=True)
    h0 = full.hidden_states[1][0, -1]
    pm.heads["mid"].eval()
    assert torch.allclose(pm(h0[None], "mid"), r[:1], atol=1e-5)


def test_score_all_heads_runs_the_backbone_once():
    pm = _pm("qwen2")
    for name, pooler in [("a", "swiglu"), ("b", "bert"), ("c", "identity")]:
        pm.add_head(name, pooler)
    calls = []
    h = get_module(unwrap(pm.backbone), pm.profile.final_norm).register_forward_hook(lambda *a: calls.append(1))
    allr = pm.score_all_heads(PROMPTS[3:], COMPS[3:], shared_prefix=False)
    n_all = len(calls)
    calls.clear()
    one = pm.score(PROMPTS[3:], COMPS[3:], head="b", shared_prefix=False)
    assert n_all == len(calls) == 1
    h.remove()
    assert set(allr) == {"a", "b", "c"}
    assert torch.allclose(allr["b"], one, atol=1e-6)


def test_head_management():
    pm = _pm("llama")
    pm.add_head("a", "identity")
    pm.add_head("b", "bert", activate=False)
    assert pm.head_names == ["a", "b"] and pm.active == "a"
    pm.set_head("b")
    assert pm.active == "b"
    with pytest.raises(KeyError, match="no head named 'zzz'"):
        pm.set_head("zzz")
    with pytest.raises(ValueError, match="exists already"):
        pm.add_head("a", "identity")
    pm.remove_head("b")
    assert pm.active == "a"
    with pytest.raises(IndexError):
        pm.add_head("c", "identity", layer=99)


def test_missing_reward_token_is_an_error_naming_the_example(tok):
    fake = ChatFormat("chat", "<pad>", tok.pad_token_id, "x")
    with pytest.raises(RewardTokenError, match="example 7"):
        encode(tok, fake, "hi", "there", name="example 7")


def test_plain_fallback_without_chat_template():
    tok = make_tokenizer(chat=False)
    bb, tok = make_backbone("gpt2", tok)
    pm = PreferenceModel.from_backbone(bb, tok)
    assert pm.chat.mode == "plain" and pm.chat.reward_token == tok.eos_token
    item = pm.encode(["hi"], ["there"])[0]
    assert item.ids[-1] == tok.eos_token_id
    assert "Assistant: there" in tok.decode(item.ids)
    pm.add_head("a", "bert")
    a = pm.score(["q1", "q1"], ["x", "y"])
    b = pm.score(["q1", "q1"], ["x", "y"], shared_prefix=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_long_sequences_lose_prompt_tokens_from_the_left():
    pm = _pm("llama", max_length=40)
    item = pm.encode(["The quick brown fox " * 30], ["yes"])[0]
    assert len(item.ids) == 40 and item.truncated > 0
    assert item.ids[-1] == pm.chat.reward_token_id
    assert pm.tokenizer.decode(item.ids[item.prompt_len:]).startswith("yes")


def test_unknown_family_falls_back_to_a_structural_profile_with_a_warning():
    bb, tok = make_backbone("llama")
    want = PreferenceModel.from_backbone(bb, tok).features(PROMPTS, COMPS, layers=[-1, 1]).states
    bb.config.model_type = "mystery_decoder"
    with pytest.warns(UserWarning, match="no prefheads profile for model_type 'mystery_decoder'"):
        pm = PreferenceModel.from_backbone(bb, tok)
    assert pm.profile.generic and pm.profile.layers == "model.layers" and pm.profile.final_norm == "model.norm"
    got = pm.features(PROMPTS, COMPS, layers=[-1, 1]).states
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_every_family_has_a_profile_and_no_fallback(family):
    bb, tok = make_backbone(family)
    pm = PreferenceModel.from_backbone(bb, tok)
    assert not pm.profile.generic and pm.profile.model_type == bb.config.model_type


def test_shared_prefix_chunks_bound_padded_tokens_and_cover_every_group():
    import random

    from prefheads.engine import _group_chunks

    rng = random.Random(0)
    for suffix_heavy in (False, True):
        n = 60
        plen = [rng.randint(5, 80) if not suffix_heavy else rng.randint(5, 15) for _ in range(n)]
        smax = [rng.randint(1, 6) if not suffix_heavy else rng.randint(10, 120) for _ in range(n)]
        nmem = [rng.randint(2, 5) for _ in range(n)]
        chunks = _group_chunks(plen, smax, nmem, max_tokens=512, max_batch=16)
        assert sorted(g for c in chunks for g in c) == list(range(n))
        for c in chunks:
            padded = len(c) * max(plen[g] for g in c) + sum(nmem[g] for g in c) * max(smax[g] for g in c)
            assert len(c) <= 16 and (padded <= 512 or len(c) == 1)
        key = smax if suffix_heavy else plen  # ordered by the heavier side: little padding there
        flat = [g for c in chunks for g in c]
        assert [key[g] for g in flat] == sorted(key[g] for g in flat)


def _plain_logprob_sums(model, items):
    """Summed completion log-probs of each item from a plain forward of the causal LM."""
    out = []
    for item in items:
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([item.ids])).logits[0].float(), -1)
        out.append(float(sum(lp[t - 1, item.ids[t]] for t in range(item.prompt_len, len(item.ids)))))
    return torch.tensor(out)


def test_multimodal_gemma3_is_wrapped_through_its_text_config():
    # Gemma-3 4B and up load as Gemma3ForConditionalGeneration: width, context and the SwiGLU
    # width live in the nested text config; the blocks sit in model.language_model
    pm = _pm("gemma3")
    assert type(pm.backbone).__name__ == "Gemma3ForConditionalGeneration"
    assert not hasattr(pm.backbone.config, "hidden_size")
    assert not pm.profile.generic and pm.profile.final_norm == "model.language_model.norm"
    assert (pm.hidden_size, pm.max_length, pm.num_layers) == (32, 256, 3)
    assert pm.add_head("h", "swiglu", dropout=0.0).config.pooler_kwargs["ffn_dim"] == 64
    assert pm.base_record()["vocab_size"] == len(pm.tokenizer)
    feats = pm.features(PROMPTS[:2], COMPS[:2], layers=[-1, 1])
    for i, item in enumerate(pm.encode(PROMPTS[:2], COMPS[:2])):
        out = pm.backbone(input_ids=torch.tensor([item.ids]), output_hidden_states=True)
        assert torch.allclose(feats.states[-1][i], out.hidden_states[-1][0, -1], atol=1e-5)
        assert torch.allclose(feats.states[1][i], out.hidden_states[2][0, -1], atol=1e-5)
    assert torch.allclose(pm.score(PROMPTS[:2], COMPS[:2]), pm(feats), atol=1e-6)


def _opt(tok, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("opt", vocab_size=len(tok), num_hidden_layers=3, hidden_size=32, ffn_dim=64,
                               num_attention_heads=4, max_position_embeddings=256, **kw)
    cfg.pad_token_id = tok.pad_token_id
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def test_opt_without_final_norm_reads_the_last_block_and_projects_out_for_logprobs(tok):
    # as facebook/opt-350m: post-norm blocks (no final norm) and project_out 32 -> 16 before lm_head
    bb = _opt(tok, word_embed_proj_dim=16, do_layer_norm_before=False)
    assert bb.model.decoder.final_layer_norm is None and bb.model.decoder.project_out is not None
    pm = PreferenceModel.from_backbone(bb, tok)
    assert pm.hidden_size == 32
    pm.add_head("h", "identity")
    items = pm.encode(PROMPTS[:3], COMPS[:3])
    want = _plain_logprob_sums(bb, items)
    for shared in (False, True):
        feats = pm.features(PROMPTS[:3], COMPS[:3], layers=[-1, 2], logprobs=True, shared_prefix=shared)
        assert torch.equal(feats.states[-1], feats.states[2])  # the last block's output is the final state
        assert torch.allclose(feats.logprob_sum, want, atol=1e-4)
    assert pm.score(PROMPTS[:3], COMPS[:3]).shape == (3,)


def test_opt_with_final_norm_projects_out_for_logprobs(tok):
    bb = _opt(tok, word_embed_proj_dim=16, do_layer_norm_before=True)
    pm = PreferenceModel.from_backbone(bb, tok)
    items = pm.encode(PROMPTS[:3], COMPS[:3])
    feats = pm.features(PROMPTS[:3], COMPS[:3], logprobs=True, shared_prefix=False)
    assert feats.states[-1].shape == (3, 32)  # heads read the state before project_out
    assert torch.allclose(feats.logprob_sum, _plain_logprob_sums(bb, items), atol=1e-4)


def test_a_module_the_model_lacks_is_a_clear_error_not_none(tok):
    bb = _opt(tok, do_layer_norm_before=False)
    with pytest.raises(AttributeError, match="'final_layer_norm' is None"):
        get_module(bb, "model.decoder.final_layer_norm")
    assert get_module(bb, "model.decoder.final_layer_norm", optional=True) is None


@pytest.mark.parametrize("family,scaling", [("granite", {"logits_scaling": 8.0}),
                                            ("cohere", {"logit_scale": 0.0625})])
def test_logprobs_apply_the_family_logit_scaling(tok, family, scaling):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(family, vocab_size=len(tok), num_hidden_layers=3, hidden_size=32,
                               intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, **scaling)
    cfg.pad_token_id = tok.pad_token_id
    bb = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with pytest.warns(UserWarning, match="no prefheads profile"):
        pm = PreferenceModel.from_backbone(bb, tok)
    items = pm.encode(PROMPTS[:3], COMPS[:3])
    want = _plain_logprob_sums(bb, items)
    for shared in (False, True):
        feats = pm.features(PROMPTS[:3], COMPS[:3], logprobs=True, shared_prefix=shared)
        assert torch.allclose(feats.logprob_sum, want, atol=1e-4), (family, shared)


@pytest.mark.parametrize("name,why", [("rte-v1.2", "contains '.'"), ("", "non-empty string"),
                                      ("keys", "attribute of torch's ModuleDict")])
def test_head_names_torch_cannot_hold_are_refused_by_name(name, why, tmp_path):
    pm = _pm("llama")
    with pytest.raises(ValueError, match=why):
        pm.add_head(name, "identity")
    pm.add_head("ok", "identity")
    pm.save_heads(tmp_path)
    cfg = json.loads((tmp_path / "heads.json").read_text())
    cfg["heads"] = {name: cfg["heads"]["ok"]}
    cfg["active"] = name
    (tmp_path / "heads.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadFileError, match=why):
        PreferenceModel.from_backbone(pm.backbone, pm.tokenizer).load_heads(tmp_path)
    from prefheads.training import FitConfig

    with pytest.raises(ValueError, match=why):  # before fit runs the backbone
        FitConfig(task="glue/rte", head_name=name)
