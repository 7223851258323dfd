"""On the trained toy model, WANDA at 50% keeps perplexity lower than magnitude pruning at 50%."""

from __future__ import annotations

from sae_core.compression import compress_model
from sae_core.datasets import token_batch
from sae_core.lm_eval import perplexity
from sae_core.models import load_language_model


def test_wanda_beats_magnitude_on_the_toy_model(toy_world):
    figures = {}
    for method in ("dense", "wanda", "magnitude", "magnitude_matrix"):  # magnitude: per row
        model = load_language_model(str(toy_world.model_dir))
        windows = token_batch(model.tokenizer, "toy-corpus:2", 48, 64)
        calibration, held_out = windows[:32], windows[32:]
        if method != "dense":
            compress_model(model.hf_model, f"{method}:0.5", calibration, progress=False)
        figures[method] = perplexity(model.hf_model, held_out)
    print("toy-model perplexity at 50%:", figures)
    assert figures["dense"] < figures["wanda"] < figures["magnitude"]
    assert figures["wanda"] < figures["magnitude_matrix"]
