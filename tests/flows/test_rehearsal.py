"""Rehearsals of the hub presets (``gpt2-small``, ``gemma-2-2b``), offline, end to end.

Each runs ``python -m flows.full --preset <preset>`` -- the user's command, in its own process --
against a synthetic hub cache (``tests/helpers/fakehub.py``: the real repository layouts and shapes with
random weights; Gemma-2-2B shrunk to 2 layers and a 4096-token vocabulary, which sae_core.models
allows because TransformerLens takes both from the loaded HF model) and the dataset mirror
(``SAE_TRANSFER_DATASET_MIRROR``), at tiny budgets: one layer, every hook type the preset lists
(resid_post, mlp_out, attn_z / hook_z), a few thousand tokens, one pruned-SAE rule. What it proves:
everything between "the files are on disk" and "the metrics are in the table" runs -- release
names and sae_id templates, sae-lens' loaders for the OpenAI TopK, Kissane hook_z and Gemma Scope
JumpReLU families, hook names, weight processing, hook_z reshaping, bfloat16 (Gemma), WANDA on both
architectures, the pruned Gemma folder reloaded through TransformerLens, the metric table.
Metric *values* are meaningless here (random weights).

Slow (minutes each on 2 CPU cores): ``make test-slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sae_core.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
LAYER = 1

# Tiny budgets, same flags a user would pass.
TINY_ARGS = [
    "--layers", str(LAYER), "--tokens", "1024", "--sae-rules", "wanda", "--sae-sparsities", "0.5", "--metrics", "core",
    "--device", "cpu",
    "--set", "calibration.n_samples=2", "--set", "calibration.seq_len=64",
    "--set", "activations.seq_len=64", "--set", "activations.batch_sequences=8", "--set", "activations.shard_sequences=16",
    "--set", "retrained_sae.train_tokens=256", "--set", "retrained_sae.batch_size=256",
    "--set", "pruned_sae.calibration_tokens=512", "--set", "quality.n_tokens=256", "--set", "quality.ce_sequences=2",
    # SAEBench's weight-based per-latent metrics compare every pair of latents (d_sae^2 x d_in: 1.6 TFLOP for a
    # 32k-latent SAE, milliseconds on a GPU, many minutes on 2 CPU cores): off here, on in the presets.
    "--set", "metric_overrides={core: {n_eval_reconstruction_batches: 1, n_eval_sparsity_variance_batches: 1, "
             "batch_size_prompts: 2, context_size: 32, compute_featurewise_weight_based_metrics: false}}",
]


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    from tests.helpers.fakehub import shared_fake_hub

    return shared_fake_hub(tmp_path_factory, layers=(LAYER,))


def run_cli(fake_hub, tmp_path: Path, preset: str, extra: list[str] | None = None, timeout: int = 3600):
    env = {**os.environ, **fake_hub.env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT),
           "SAE_TRANSFER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_URL")
    storage = f"file://{tmp_path / 'store'}"
    cmd = [sys.executable, "-m", "flows.full", "--preset", preset, "--storage", storage, "--json", *TINY_ARGS, *(extra or [])]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done, Storage(storage)


def check_table(done, storage: Storage, hooks: set[str]) -> pd.DataFrame:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    lines = done.stdout.splitlines()  # --json: the CLI prints its summary JSON last on stdout
    summary = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{"):]))
    variants = storage.read_parquet_prefix("variants")
    # original (transfer), retrained, pruned-wanda-50% for every hook
    assert set(variants["hook"]) == hooks
    assert sorted(variants.groupby("hook")["sae_variant"].apply(sorted).iloc[0]) == ["original", "pruned", "retrained"]
    assert variants[["mse", "explained_variance_centred", "l0"]].notna().all().all()
    metrics = storage.read_parquet_prefix("metrics")
    # core, and every variant's feature identity against its original (repair.identity, on by default)
    assert set(metrics["metric_family"]) == {"core", "feature_identity"} and set(metrics["hook"]) == hooks
    assert (metrics["status"] == "ok").all(), metrics[["hook", "sae_variant", "status", "reason"]]
    assert metrics.loc[metrics["metric_name"] == "l0", "value"].notna().all()
    assert storage.exists(f"{summary['report']['prefix']}/summary.md")
    return metrics


@pytest.mark.slow
def test_gpt2_small_preset_rehearsal(fake_hub, tmp_path):
    done, storage = run_cli(fake_hub, tmp_path, "gpt2-small")
    hooks = {f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.hook_mlp_out", f"blocks.{LAYER}.attn.hook_z"}
    metrics = check_table(done, storage, hooks)
    assert set(metrics["model"]) == {"gpt2"}
    originals = {m["hook"]: m for m in (storage.manifest(p.rsplit("/", 1)[0]) for p in storage.list("saes/original")
                                        if p.endswith("manifest.json"))}
    assert {h: m["architecture"] for h, m in originals.items()} == {
        f"blocks.{LAYER}.hook_resid_post": "topk", f"blocks.{LAYER}.hook_mlp_out": "topk", f"blocks.{LAYER}.attn.hook_z": "standard"}


@pytest.mark.slow
def test_gemma_2_2b_preset_rehearsal_in_bfloat16(fake_hub, tmp_path):
    done, storage = run_cli(fake_hub, tmp_path, "gemma-2-2b")
    hooks = {f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.hook_mlp_out", f"blocks.{LAYER}.attn.hook_z"}
    metrics = check_table(done, storage, hooks)
    assert set(metrics["model"]) == {"google/gemma-2-2b"}
    pruned = [storage.manifest(p.rsplit("/", 1)[0]) for p in storage.list("saes/pruned") if p.endswith("manifest.json")]
    assert {m["architecture"] for m in pruned} == {"jumprelu"}


@pytest.mark.parametrize("args, fragment", [
    (["--preset", "gemma-2-2b", "--layers", "26"], "has 26 blocks (layers 0..25)"),
    (["--preset", "gemma-2-2b", "--set", "original_sae.release=gemma-scope-2b-pt-res",
      "--set", "original_sae.sae_id_template=layer_{layer}/width_16k/canonical"], "unknown sae_id 'layer_12/width_16k/canonical'"),
    (["--preset", "gpt2-small", "--set", "original_sae.release=gpt2-small-resid-post-v5-32k",
      "--set", "original_sae.sae_id_template=blocks.{layer}.hook_z"], "unknown sae_id 'blocks.0.hook_z'"),
], ids=["gemma-layer-past-last-block", "gemma-scope-id-not-in-release", "gpt2-id-not-in-release"])
def test_hub_preset_bad_references_fail_before_any_download(args, fragment, tmp_path, monkeypatch, capsys):
    """No hub, no cache: the errors come from local tables (TransformerLens', sae-lens'), before Prefect starts."""
    import flows.full
    from flows import cli

    started: list = []
    monkeypatch.setattr(flows.full, "full", lambda *a, **k: started.append(a) or {})
    rc = cli.main([*args, "--storage", f"file://{tmp_path / 'store'}"])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and not started, err
    assert not (tmp_path / "store").exists()


def test_dataset_mirror_serves_hub_ids_to_the_flow_and_to_saebench(tmp_path, monkeypatch):
    """SAE_TRANSFER_DATASET_MIRROR: one folder tree, read by the flow's text streams and by the
    load_dataset seen by SAEBench / SAE Lens; ids without a folder there are not touched."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sae_core.datasets import MIRROR_ENV, dataset_overrides, iter_texts, local_folder

    folder = tmp_path / "mirror" / "someone" / "corpus"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["alpha beta", "", "gamma"]}), folder / "train.parquet")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    assert list(iter_texts("someone/corpus")) == ["alpha beta", "gamma"]  # empty texts skipped, as from the hub
    assert local_folder("someone/other") is None and local_folder("someone/../someone/corpus") is None
    with dataset_overrides({}):
        import sae_lens.training.activations_store as store

        rows = store.load_dataset("someone/corpus", split="train", streaming=True)
        assert [r["text"] for r in rows] == ["alpha beta", "", "gamma"]
        # An explicit override wins over the mirror.
        other = tmp_path / "explicit"
        other.mkdir()
        pq.write_table(pa.table({"text": ["delta"]}), other / "train.parquet")
        with dataset_overrides({"someone/corpus": other}):
            assert [r["text"] for r in datasets.load_dataset("someone/corpus", split="train")] == ["delta"]
    monkeypatch.delenv(MIRROR_ENV)
    assert local_folder("someone/corpus") is None
