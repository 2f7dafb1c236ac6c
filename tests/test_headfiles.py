"""Head folders: which bases they load onto, what a bad heads.json gives, where files may live, modes."""

from __future__ import annotations

import copy
import json
import os
import stat

import pytest
import torch

from conftest import make_backbone
from prefheads import PreferenceModel
from prefheads.fingerprint import base_weights_digest, weights_digest
from prefheads.headio import HeadFileError, read_config

Q, CANDS = "q", ["x", "y"]


def _saved(tmp_path, seed=0, model_id="tiny/llama"):
    bb, tok = make_backbone("llama", seed=seed)
    pm = PreferenceModel.from_backbone(bb, tok, model_id=model_id)
    pm.add_head("h", "swiglu")
    pm.save_heads(tmp_path)
    return pm


def _edit(folder, fn):
    cfg = json.loads((folder / "heads.json").read_text())
    fn(cfg)
    (folder / "heads.json").write_text(json.dumps(cfg))


# ----------------------------------------------------------------------------- base check


def test_base_record_holds_architecture_and_weights_digest(tmp_path):
    pm = _saved(tmp_path)
    base = read_config(tmp_path)["base"]
    assert base["model_type"] == "llama" and base["vocab_size"] == pm.backbone.config.vocab_size
    assert base["hidden_size"] == 32 and base["num_layers"] == 3
    assert base["weights_digest"] == base_weights_digest(pm.backbone) == pm.base_fingerprint()


def test_same_weights_under_another_spelling_are_accepted(tmp_path):
    pm = _saved(tmp_path, model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    want = pm.score(Q, CANDS)
    for spelling in ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "./local-copy"):
        other = PreferenceModel.from_backbone(*make_backbone("llama"), model_id=spelling)  # same seed: same weights
        other.load_heads(tmp_path)
        assert torch.equal(other.score(Q, CANDS), want)


def test_other_weights_under_the_same_name_are_refused(tmp_path):
    _saved(tmp_path)
    other = PreferenceModel.from_backbone(*make_backbone("llama", seed=1), model_id="tiny/other")
    with pytest.raises(HeadFileError, match=r"'tiny/llama'.*'tiny/other'.*weights differ"):
        other.load_heads(tmp_path)
    same_name = PreferenceModel.from_backbone(*make_backbone("llama", seed=1), model_id="tiny/llama")
    with pytest.raises(HeadFileError, match="weights differ"):
        same_name.load_heads(tmp_path)
    assert same_name.load_heads(tmp_path, allow_base_mismatch=True) == ["h"]


def test_width_mismatch_is_refused_even_with_the_override(tmp_path):
    _saved(tmp_path)
    wide = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")
    wide.hidden_size = 64
    with pytest.raises(HeadFileError, match="width 32"):
        wide.load_heads(tmp_path, allow_base_mismatch=True)


def test_heads_saved_without_a_digest_fall_back_to_the_model_id(tmp_path):
    _saved(tmp_path)
    _edit(tmp_path, lambda c: [c["base"].pop(k) for k in ("weights_digest", "vocab_size")])
    # the older record cannot tell weights apart: the same name passes, another name does not
    PreferenceModel.from_backbone(*make_backbone("llama", seed=1), model_id="tiny/llama").load_heads(tmp_path)
    renamed = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/renamed")
    with pytest.raises(HeadFileError, match="model_id: 'tiny/llama' vs 'tiny/renamed'"):
        renamed.load_heads(tmp_path)


def test_a_backbone_without_a_digest_is_matched_by_name(tmp_path):
    _saved(tmp_path)
    bb, tok = make_backbone("llama")
    bb.hf_quantizer = object()  # as a bitsandbytes-quantized model: packed weights, no comparable digest
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    assert pm.base_fingerprint() is None
    pm.load_heads(tmp_path)
    pm.model_id = "tiny/renamed"
    with pytest.raises(HeadFileError, match="model_id"):
        pm.load_heads(tmp_path)


def test_bfloat16_copy_matches_by_weights_and_float16_copy_by_name(tmp_path):
    _saved(tmp_path)
    bb, tok = make_backbone("llama")
    PreferenceModel.from_backbone(copy.deepcopy(bb).to(torch.bfloat16), tok, model_id="elsewhere").load_heads(tmp_path)
    # float16 rounds the weights differently from bfloat16: the digests cannot be compared
    half = copy.deepcopy(bb).half()
    assert read_config(tmp_path)["base"]["weights_dtype"] == "float32"
    PreferenceModel.from_backbone(half, tok, model_id="tiny/llama").load_heads(tmp_path)
    with pytest.raises(HeadFileError, match="model_id: 'tiny/llama' vs 'elsewhere'"):
        PreferenceModel.from_backbone(half, tok, model_id="elsewhere").load_heads(tmp_path)


def test_digest_of_the_base_ignores_lora_adapters_and_dtype():
    from peft import LoraConfig, get_peft_model

    bb, _ = make_backbone("llama")
    plain = base_weights_digest(bb)
    assert base_weights_digest(copy.deepcopy(bb).to(torch.bfloat16)) == plain
    wrapped = get_peft_model(copy.deepcopy(bb), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a trained adapter: it changes the outputs, not the base
    assert base_weights_digest(wrapped) == plain
    assert weights_digest(wrapped) != weights_digest(bb)  # the exact digest (feature cache) sees adapters
    with torch.no_grad():
        next(bb.parameters()).add_(1e-2)
    assert base_weights_digest(bb) != plain


def test_the_exact_digest_sees_every_value_and_the_dtype():
    """The feature cache keys on weights_digest: one retrained embedding row (values a strided
    sample skips) or a bfloat16 copy must give another key, or stale features would be served."""
    from prefheads.chat import detect_format, encode
    from prefheads.training.cache import feature_key

    bb, tok = make_backbone("llama")
    items = [encode(tok, detect_format(tok), "hi", "there")]
    before, key = weights_digest(bb), feature_key(bb, items, "float32")
    emb = bb.get_input_embeddings().weight
    step = max(1, emb.numel() // 2048)
    row = 1 + step // emb.shape[1] if step > emb.shape[1] else 1
    with torch.no_grad():
        emb[row, 1:] += 0.5  # off the sample's stride: column 0 of each sampled row stays
    assert weights_digest(bb) != before and feature_key(bb, items, "float32") != key
    half = copy.deepcopy(bb).to(torch.bfloat16)
    again = copy.deepcopy(half).float()
    assert weights_digest(half) != weights_digest(again) and weights_digest(half) == weights_digest(copy.deepcopy(half))
    assert weights_digest(copy.deepcopy(bb)) == weights_digest(bb)  # equal weights, equal digest


def test_lora_heads_reload_on_a_fresh_base_under_another_name(tmp_path):
    from peft import LoraConfig, get_peft_model

    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    pm.backbone = get_peft_model(pm.backbone, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    pm.add_head("h", "swiglu")
    want = pm.score(Q, CANDS)
    pm.backbone.save_pretrained(tmp_path / "adapter")
    pm.save_heads(tmp_path)
    assert read_config(tmp_path)["base"]["weights_digest"] == base_weights_digest(make_backbone("llama")[0])
    fresh = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="/somewhere/tiny-llama")
    fresh.load_heads(tmp_path)
    assert hasattr(fresh.backbone, "peft_config")
    assert torch.allclose(fresh.score(Q, CANDS), want, atol=1e-6)


def test_full_fine_tune_heads_belong_to_the_tuned_backbone(tmp_path):
    bb, tok = make_backbone("llama")
    pm = PreferenceModel.from_backbone(bb, tok, model_id="tiny/llama")
    with torch.no_grad():
        for p in pm.backbone.parameters():
            p.add_(torch.randn_like(p) * 1e-2)  # as a fine-tuning run leaves it
    pm.add_head("h", "swiglu")
    want = pm.score(Q, CANDS)
    pm.backbone.save_pretrained(tmp_path / "backbone")
    tok.save_pretrained(tmp_path / "backbone")
    pm.fine_tuned = "backbone"
    pm.save_heads(tmp_path)
    for path in (tmp_path / "backbone", os.path.relpath(tmp_path / "backbone")):
        tuned = PreferenceModel.from_pretrained(str(path), heads=tmp_path)
        assert torch.allclose(tuned.score(Q, CANDS), want, atol=1e-6)
    base = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")
    with pytest.raises(HeadFileError, match=r"backbone'.*weights differ"):
        base.load_heads(tmp_path)


def test_digest_is_computed_once_until_a_weight_changes(monkeypatch, tmp_path):
    import prefheads.fingerprint as fp

    calls = []
    real = fp.base_weights_digest
    monkeypatch.setattr(fp, "base_weights_digest", lambda m: calls.append(1) or real(m))
    pm = _saved(tmp_path)
    first = pm.base_fingerprint()
    pm.save_heads(tmp_path)
    pm.load_heads(tmp_path)
    assert pm.base_fingerprint() == first and len(calls) == 1
    with torch.no_grad():
        next(pm.backbone.parameters()).mul_(1.5)  # an in-place update, as an optimizer step
    assert pm.base_fingerprint() != first and len(calls) == 2


# ----------------------------------------------------------------------------- bad heads.json


def test_config_that_does_not_fit_its_weights_is_a_head_file_error(tmp_path):
    _saved(tmp_path)
    _edit(tmp_path, lambda c: c["heads"]["h"]["config"]["pooler_kwargs"].update(ffn_dim=48))
    pm = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")
    with pytest.raises(HeadFileError, match=r"h\.[0-9a-f]{12}\.safetensors: head 'h'.*'pooler\.\w+\.weight' has shape"):
        pm.load_heads(tmp_path)
    assert pm.head_names == []


@pytest.mark.parametrize("field, value, match", [
    ("pooler", "nope", "pooler"),
    ("pooler", 3, "pooler"),
    ("hidden_size", "32", "hidden_size"),
    ("layer", 1.5, "layer"),
    ("dropout", "0.1", "dropout"),
    ("bias", "no", "bias"),
    ("pooler_kwargs", [], "pooler_kwargs"),
    ("pooler_kwargs", {"ffn_dim": "wide"}, "pooler_kwargs"),
    ("pooler_kwargs", {"ffn_dim": -4}, "pooler_kwargs"),
    ("layers", 3, "layers"),
])
def test_config_that_cannot_be_built_names_the_field(tmp_path, field, value, match):
    _saved(tmp_path)
    _edit(tmp_path, lambda c: c["heads"]["h"]["config"].update({field: value}))
    pm = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")
    with pytest.raises(HeadFileError, match=rf"heads\.json: head 'h'.*{match}"):
        pm.load_heads(tmp_path)


def test_weights_file_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "heads"
    _saved(folder)
    entry = read_config(folder)["heads"]["h"]
    outside = tmp_path / "x.safetensors"
    outside.write_bytes((folder / entry["file"]).read_bytes())  # a valid file with the right sha256
    pm = PreferenceModel.from_backbone(*make_backbone("llama"), model_id="tiny/llama")
    (folder / "link.safetensors").symlink_to(outside)
    for ref in ("../x.safetensors", str(outside), "link.safetensors", "sub/../../x.safetensors"):
        _edit(folder, lambda c: c["heads"]["h"].update(file=ref))
        with pytest.raises(HeadFileError, match="outside the head folder"):
            pm.load_heads(folder)
    (folder / "inside.safetensors").symlink_to(folder / entry["file"])  # a link that stays inside is fine
    _edit(folder, lambda c: c["heads"]["h"].update(file="inside.safetensors"))
    assert pm.load_heads(folder) == ["h"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_take_their_mode_from_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _saved(tmp_path)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"heads.json", "README.md"} and len(files) == 3
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
