"""Model sources, bad-input paths (cheap, default suite): a packaged model that is not installed, an
altered or truncated GGUF file, a hook layer the model lacks. The real conversion and the real model's
parity with its HookedTransformer view are in tests/sae_core/test_real_model.py (``real_model`` marker)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from sae_core import model_sources
from sae_core.model_sources import ModelSourceError, check_gguf_file, convert_gguf_to_hf
from sae_core.datasets.debian_text import missing_packages

# The preset's text comes from Debian packages (`make env-real`); without them these tests cannot
# build its config, and the real-model checks (`make test-slow`) install them first.
needs_debian_text = pytest.mark.skipif(
    bool(missing_packages()), reason="Debian text packages missing (make env-real)")


def test_altered_or_truncated_gguf_is_refused_before_conversion(tmp_path):
    original = b"GGUF" + bytes(range(256)) * 64
    expected = hashlib.sha256(original).hexdigest()
    good = tmp_path / "model.gguf"
    good.write_bytes(original)
    assert check_gguf_file(good, expected) == expected

    altered = tmp_path / "altered.gguf"
    altered.write_bytes(original[:100] + b"\x00" + original[101:])
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(original[: len(original) // 2])
    for bad in (altered, truncated):
        out = tmp_path / f"hf-{bad.stem}"
        # a conversion that read the file before checking it would fail inside transformers' GGUF
        # parser with an unrelated message, or write a half folder: neither passes here.
        with pytest.raises(ModelSourceError, match=r"sha256 .* expected .*truncated or altered.*make env-real"):
            convert_gguf_to_hf(bad, expected, out)
        assert not out.exists()
    with pytest.raises(ModelSourceError, match="does not exist"):
        check_gguf_file(tmp_path / "missing.gguf", expected)


def test_missing_model_package_names_what_to_install(monkeypatch):
    from sae_core.models import check_model_reference

    missing = replace(model_sources.PACKAGED_MODELS["gemma-3-270m"], module="not_an_installed_gemma_package",
                      distribution="not-an-installed-gemma-package")
    monkeypatch.setitem(model_sources.PACKAGED_MODELS, "gemma-3-270m", missing)
    with pytest.raises(ModelSourceError, match=r"not-an-installed-gemma-package.*make env-real.*uv sync --group real-model"):
        check_model_reference("gemma-3-270m")


@needs_debian_text
def test_hook_layer_the_model_lacks_is_a_config_error():
    from sae_core.config import build_config

    with pytest.raises(ValueError, match=r"layers \[18\] do not exist in 'gemma-3-270m', which has 18 layers"):
        build_config("gemma-3-270m", {"layers": [18]})


@needs_debian_text
def test_packaged_preset_validates_and_uses_the_real_profile():
    from sae_core.config import build_config

    config = build_config("gemma-3-270m")
    assert config.metric_profile == "real"
    assert config.hook_names() == ["blocks.6.hook_resid_post"]
    # sequences stay inside Gemma 3's 512-token sliding window, where HF and TransformerLens agree
    assert config.activations.seq_len <= 512 and config.calibration.seq_len <= 512
    core = config.metric_settings("core")
    assert core["context_size"] <= 512 and core["exclude_special_tokens_from_reconstruction"]


class _ByteTokenizer:
    """Bytes as token ids: enough for the window code, independent of any model."""

    bos_token_id, eos_token_id = 256, 257

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode())}


@pytest.mark.parametrize("dataset", ["toy-corpus:3", pytest.param("debian-text:handbook", marks=needs_debian_text)])
def test_calibration_seed_chooses_the_calibration_windows(dataset):
    """calibration.seed used to enter the cache key only (the first windows were always taken)."""
    from sae_core.datasets import pruning_windows

    tok = _ByteTokenizer()
    cal0, held0 = pruning_windows(tok, dataset, 8, 4, 32, seed=0)
    cal0_again, _ = pruning_windows(tok, dataset, 8, 4, 32, seed=0)
    cal1, held1 = pruning_windows(tok, dataset, 8, 4, 32, seed=1)
    assert cal0.shape == (8, 32) and held0.shape == (4, 32)
    assert torch.equal(cal0, cal0_again)
    assert not torch.equal(cal0, cal1)  # an ignored seed gives the same windows
    assert torch.equal(held0, held1)  # perplexity is measured on the same text whatever the seed
    calibration_rows = {tuple(r) for r in torch.cat([cal0, cal1]).tolist()}
    assert not calibration_rows & {tuple(r) for r in held0.tolist()}


def test_real_metric_profile_changes_sizes_only_not_saebench_thresholds():
    """The `real` profile is SAEBench's defaults with sizes cut: thresholds (absorption's probe F1 and
    feature count, SCR/TPP's n values' meaning, ...) must stay SAEBench's unless a doc says why."""
    from sae_core.metrics.registry import METRIC_NAMES, REAL_OVERRIDES, get_metric, settings_for

    thresholds = {"absorption": ["min_GT_probe_f1", "min_feats_for_eval", "f1_jump_threshold"],
                  "core": ["exclude_special_tokens_from_reconstruction"], "ravel": ["train_test_split"]}
    for name in METRIC_NAMES:
        hub, real = settings_for(name, "hub"), settings_for(name, "real")
        changed = {k for k in hub if hub[k] != real[k]}
        assert changed <= set(REAL_OVERRIDES.get(name) or {}), (name, changed)
        for key in thresholds.get(name, []):
            assert real[key] == hub[key], (name, key)
        assert get_metric(name).settings_cls(**real) == get_metric(name).defaults("real")
