"""The same command and seed give the same numbers (docs/reproducibility.md).

The slow test runs the smallest experiment the flow tests use twice, each on fresh storage (so no
artifact and no Prefect cache entry of the first run can serve the second: Prefect's results live in
the storage root) and compares the metrics and variants tables. The fast tests pin the two parts
whose draws used to depend on what ran before in the process: SAE training and an SAEBench family.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from sae_core.storage import Storage
from tests.conftest import TINY_FLOW_OVERRIDES

# What legitimately differs between two runs: when and under which flow run a row was written, and wall times.
RUN_COLUMNS = {"run_id", "timestamp", "wall_time_s", "seconds"}


def comparable(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.drop(columns=[c for c in frame.columns if c in RUN_COLUMNS])
    return frame.sort_values([k for k in keys if k in frame]).reset_index(drop=True)[sorted(frame.columns)]


def test_sae_training_twice_is_bit_identical_whatever_ran_before():
    from sae_core.sae_io import new_sae
    from sae_core.sae_train import train_sae

    acts = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    trained = []
    for state in (1, 2):  # what the tasks that ran before left in the process-wide generator
        torch.manual_seed(state)
        like = new_sae("topk", 16, 32, "blocks.0.hook_resid_post", k=4, seed=0)
        sae, report = train_sae(like, list(acts.split(256)), 2048, batch_size=256, lr=3e-3, seed=0, progress=False,
                                shuffle_buffer_batches=2)
        trained.append((sae, report))
    (a, ra), (b, rb) = trained
    assert all(torch.equal(t, b.state_dict()[n]) for n, t in a.state_dict().items())
    assert ra["dead_latents"] == rb["dead_latents"] and ra["final_explained_variance"] == rb["final_explained_variance"]


def test_an_saebench_family_twice_gives_the_same_numbers_whatever_ran_before(toy_model, tmp_path):
    """Sparse probing draws its probe samples with ``torch.randperm`` from the process-wide generator.
    The first run computes SAEBench's LLM-side cache (drawing as it goes), the second reads it; the
    adapter reseeds before the SAE-side work, so both draw the same (before: the top-k accuracies
    were up to 0.026 apart, docs/reproducibility.md). The process-wide state differs before each too."""
    import numpy as np

    from sae_core.metrics import run_metric
    from sae_core.sae_io import new_sae

    hooked = toy_model.hooked()
    sae = new_sae("topk", hooked.cfg.d_model, 64, "blocks.1.hook_resid_post", k=8, seed=0)
    settings = {"dataset_names": ["LabHC/bias_in_bios_class_set1"]}
    values = []
    for state in (1, 2):
        torch.manual_seed(state)
        np.random.seed(state)
        result = run_metric("sparse_probing", sae, hooked, toy_model.hf_model, toy_model.tokenizer, settings=settings,
                            profile="toy", artifacts_dir=tmp_path / "artifacts")
        assert result.status == "ok", result.reason
        values.append(result.headline_dict())
    assert values[0] == values[1]
    # the per-item values the report bootstraps over are in SAEBench's stored output, and average to the headline
    from sae_core.spread import item_values

    items = item_values("sparse_probing", result.model_dump(mode="json")["raw"])
    top1 = items[items["metric_name"] == "sae_top_1_test_accuracy"]
    assert len(top1) == 1 and top1["value"].mean() == pytest.approx(values[1]["sae_top_1_test_accuracy"])


@pytest.mark.slow
def test_the_same_experiment_twice_on_fresh_storage_gives_the_same_tables(prefect_harness, tmp_path):
    from flows.full import full

    overrides = copy.deepcopy(TINY_FLOW_OVERRIDES)
    overrides["metrics"] = ["core", "sparse_probing"]  # core and a family that draws from torch's generator
    tables = []
    for name in ("first", "second"):
        url = f"file://{tmp_path / name}/store"
        full(preset="toy", overrides=overrides, storage_url=url)
        storage = Storage(url)
        tables.append((storage.read_parquet_prefix("metrics"), storage.read_parquet_prefix("variants")))
    (metrics_a, variants_a), (metrics_b, variants_b) = tables
    assert len(metrics_a) and len(variants_a)
    metric_keys = ["metric_family", "metric_name", "sae_prefix", "model_prefix", "hook"]
    pd.testing.assert_frame_equal(comparable(metrics_a, metric_keys), comparable(metrics_b, metric_keys), check_exact=True)
    variant_keys = ["sae_prefix", "model_prefix", "hook"]
    pd.testing.assert_frame_equal(comparable(variants_a, variant_keys), comparable(variants_b, variant_keys), check_exact=True)
