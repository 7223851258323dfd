"""One model, two forms: the HF model and a HookedTransformer built from the same weights."""

from __future__ import annotations

import pytest
import torch

from sae_core.models import ModelNotFound, check_hook, check_model_reference, hook_width, load_language_model


@pytest.mark.parametrize("processing", [
    None,  # TransformerLens defaults (fold_ln, centre writing weights, ...)
    {"center_writing_weights": False},  # what OpenAI's GPT-2 SAEs ask for
    {"fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False},
])
def test_hooked_and_hf_forms_give_the_same_log_probs(toy_model, processing):
    text = ["Mary Smith is a nurse from Boston. She cares for patients at the hospital."]
    ids = toy_model.tokenizer(text, return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[toy_model.tokenizer.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        hf = toy_model.hf_model(ids).logits.log_softmax(-1)
        hooked = toy_model.hooked(processing)(ids).log_softmax(-1)
    assert torch.allclose(hf, hooked, atol=1e-4), (hf - hooked).abs().max()


def test_pruned_in_memory_weights_reach_the_hooked_form(toy_world):
    model = load_language_model(str(toy_world.model_dir))
    with torch.no_grad():
        model.hf_model.transformer.h[0].mlp.c_fc.weight[:, :10] = 0.0  # a change the hooked form must see
    hooked = model.hooked({"fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False})
    assert torch.all(hooked.blocks[0].mlp.W_in[:, :10] == 0)


def test_hooked_form_is_cached_per_processing(toy_model):
    assert toy_model.hooked() is toy_model.hooked()
    assert toy_model.hooked() is not toy_model.hooked({"center_writing_weights": False})


def test_hook_checks(toy_model):
    hooked = toy_model.hooked()
    assert hook_width(hooked, "blocks.1.hook_resid_post") == hooked.cfg.d_model
    assert hook_width(hooked, "blocks.0.attn.hook_z") == hooked.cfg.n_heads * hooked.cfg.d_head
    with pytest.raises(ValueError, match="blocks.7.hook_resid_post"):
        check_hook(hooked, "blocks.7.hook_resid_post")


def test_bad_model_references_fail_before_loading(tmp_path):
    with pytest.raises(ModelNotFound, match="not-a-model-xyz"):
        check_model_reference("not-a-model-xyz")
    with pytest.raises(ModelNotFound, match="does not exist"):
        check_model_reference(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        load_language_model(str(tmp_path / "empty"))
    check_model_reference("gpt2")  # a known hub model is accepted without any download
    check_model_reference("google/gemma-2-2b")
