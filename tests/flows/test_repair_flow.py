"""The SAE variants in the pipeline (issue 19): ``variants`` in the config and on the command line,
one cached ``sae-variant`` task kind for every fix, the variants table's contract columns, the
``feature_identity`` rows, a failing fix that stores nothing and stops nothing else, and a new fix
that is one file and one registry entry."""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sae_core.config import build_config
from sae_core.storage import Storage
from tests.conftest import TINY_FLOW_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
LADDER = ["transfer", "recalibrate", "refit_decoder", "affine", "finetune:0.25", "prune:wanda:0.5", "retrain"]
OVERRIDES = {**copy.deepcopy(TINY_FLOW_OVERRIDES), "variants": LADDER, "metrics": []}
# The variants table's columns (/work REPAIR contract; tasks/saes.py _variant_result).
CONTRACT_COLUMNS = {"hook", "model_prefix", "compression", "strength", "sae_prefix", "d_sae", "variant_spec", "variant_method",
                    "sae_variant", "sae_scoring_rule", "sae_sparsity", "seed", "tokens_used", "gradient_steps", "wall_time_s",
                    "explained_variance_centred", "mse", "l0", "dead_latents", "alive_fraction", "ce_clean", "ce_with_sae",
                    "ce_delta", "ce_loss_score", "achieved_sparsity"}
IDENTITY_METRICS = {"decoder_cosine_kept_fraction", "matched_fraction", "identity_kept_fraction", "mean_r", "median_r",
                    "survived_pct", "degraded_pct", "damaged_pct", "dead_after_pct"}


# ------------------------------------------------------------------ config and command line (no Prefect)
def test_variants_default_to_todays_sections():
    assert [v.text for v in build_config("toy", {"variants": None}).variants] == [
        "transfer", "retrain", "prune:wanda:0.25", "prune:wanda:0.5", "prune:wanda:0.75"]
    assert [v.text for v in build_config("gemma-3-270m").variants] == ["transfer", "retrain", "prune:wanda:0.5"]  # unchanged preset
    config = build_config("toy", {"variants": None, "retrained_sae": {"enabled": False},
                                  "pruned_sae": {"rules": ["wanda", "magnitude"], "sparsities": [0.5]}})
    assert [v.text for v in config.variants] == ["transfer", "prune:wanda:0.5", "prune:magnitude:0.5"]
    tiny = build_config("toy", TINY_FLOW_OVERRIDES)
    assert [v.text for v in tiny.variants] == ["transfer", "retrain", "prune:wanda:0.5", "prune:magnitude:0.5"]
    # Written out as text, and the dump validates back to the same config.
    dumped = tiny.model_dump(mode="json")
    assert dumped["variants"] == ["transfer", "retrain", "prune:wanda:0.5", "prune:magnitude:0.5"]
    assert build_config("toy", dumped).variants == tiny.variants


def test_variants_given_explicitly_are_parsed_once_and_keep_their_order():
    config = build_config("toy", {"variants": [" Affine", "finetune:0.050", "prune:WANDA:0.5"]})
    assert [v.text for v in config.variants] == ["affine", "finetune:0.05", "prune:wanda:0.5"]
    assert config.variant_settings(config.variants[1])["train"]["train_tokens"] == config.retrained_sae.train_tokens
    assert config.variant_settings(config.variants[2]) == {"n_tokens": config.pruned_sae.calibration_tokens, "options": {}}
    assert config.variant_settings(config.variants[0]) == {"n_tokens": config.pruned_sae.calibration_tokens,
                                                           "options": {"ridge": config.repair.ridge}}
    assert config.needs_dense_variant_activations()
    assert not build_config("toy", {"variants": None}).needs_dense_variant_activations()


def test_toy_preset_shows_the_ladder_and_cli_prune_flags_keep_working():
    from flows.cli import overrides_from_args, parser

    assert [v.text for v in build_config("toy").variants] == ["transfer", "recalibrate", "refit_decoder", "affine", "finetune:0.05",
                                                              "finetune:0.2", "prune:wanda:0.5", "retrain"]
    args = parser().parse_args(["--sae-rules", "wanda,magnitude", "--sae-sparsities", "0.25"])
    config = build_config("toy", overrides_from_args(args))
    assert [v.text for v in config.variants] == ["transfer", "recalibrate", "refit_decoder", "affine", "finetune:0.05", "finetune:0.2",
                                                 "prune:wanda:0.25", "prune:magnitude:0.25", "retrain"]


@pytest.mark.parametrize("variants, message", [
    (["transfer", "bogus"], "unknown SAE variant 'bogus'"),
    (["finetune:0"], "finetune fraction must be in (0, 1]"),
    (["finetune:1.5"], "got 1.5 in 'finetune:1.5'"),
    (["transfer", "affine", "transfer"], "variants has duplicates: ['transfer']"),
    (["finetune:0.05", "finetune:0.050"], "variants has duplicates: ['finetune:0.05']"),
    (["prune:bogus:0.5"], "unknown prune rule 'bogus'"),
    ([], "variants is empty"),
])
def test_bad_variants_are_config_errors(variants, message):
    with pytest.raises(ValueError) as err:
        build_config("toy", {"variants": variants})
    assert message in str(err.value) and "pydantic" not in str(err.value)


def test_repair_section_is_validated():
    with pytest.raises(ValueError, match="repair.n_tokens"):
        build_config("toy", {"repair": {"n_tokens": 0}})
    with pytest.raises(ValueError, match="repair.bogus"):
        build_config("toy", {"repair": {"bogus": 1}})


@pytest.mark.parametrize("value, message", [
    ("transfer,bogus", "unknown SAE variant 'bogus'"),
    ("finetune:0", "got 0 in 'finetune:0'"),
    ("finetune:1.5", "got 1.5 in 'finetune:1.5'"),
    ("transfer,retrain,transfer", "variants has duplicates: ['transfer']"),
    ("prune:bogus:0.5", "unknown prune rule 'bogus'"),
])
def test_cli_variants_reject_bad_input_before_prefect_starts(value, message, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "flows.full", "--storage", f"file://{tmp_path}/s", "--variants", value],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "prefect").glob("*.db")), "Prefect's server was started for a config that could never run"


def test_cli_variants_reach_the_config(tmp_path):
    from flows.cli import overrides_from_args, parser

    args = parser().parse_args(["--variants", "transfer,recalibrate,refit_decoder,affine,finetune:0.01,finetune:0.05,finetune:0.2,"
                                "prune:wanda:0.5,retrain"])
    config = build_config("toy", overrides_from_args(args))
    assert [v.text for v in config.variants] == ["transfer", "recalibrate", "refit_decoder", "affine", "finetune:0.01", "finetune:0.05",
                                                 "finetune:0.2", "prune:wanda:0.5", "retrain"]
    assert "--variants" in parser().format_help()


def test_variant_task_module_fingerprints_every_method():
    from tasks.common import module_closure

    closure = {p.as_posix() for p in module_closure("tasks.saes")}
    for name in ("registry", "spec", "base", "api", "transfer", "retrain", "prune", "finetune", "recalibrate", "refit_decoder", "affine"):
        assert any(p.endswith(f"sae_core/variants/{name}.py") for p in closure), name


# ------------------------------------------------------------------ the flow
def task_runs_since(since):
    from tests.flows.test_flow import task_runs_since as runs

    return runs(since)


@pytest.fixture(scope="module")
def ladder_run(prefect_harness, tmp_path_factory):
    from flows.full import full

    storage_url = f"file://{tmp_path_factory.mktemp('repair')}/store"
    since = dt.datetime.now(dt.timezone.utc)
    summary = full(preset="toy", overrides=OVERRIDES, storage_url=storage_url)
    return storage_url, summary, task_runs_since(since)


def test_every_variant_has_one_row_with_the_contract_columns(ladder_run):
    storage_url, summary, runs = ladder_run
    storage = Storage(storage_url)
    assert summary["n_variants"] == len(LADDER)
    variants = storage.read_parquet_prefix("variants")
    assert CONTRACT_COLUMNS <= set(variants.columns), CONTRACT_COLUMNS - set(variants.columns)
    assert sorted(variants["variant_spec"]) == sorted(LADDER)
    by_spec = variants.set_index("variant_spec")
    assert by_spec.loc["transfer", "sae_variant"] == "original" and by_spec.loc["retrain", "sae_variant"] == "retrained"
    assert by_spec.loc["prune:wanda:0.5", "sae_variant"] == "pruned" and by_spec.loc["affine", "sae_variant"] == "affine"
    assert by_spec.loc["finetune:0.25", "variant_method"] == "finetune"
    assert by_spec.loc["transfer", "tokens_used"] == 0 and by_spec.loc["transfer", "gradient_steps"] == 0
    assert (by_spec.loc[["retrain", "finetune:0.25"], "gradient_steps"] > 0).all()
    assert (by_spec.loc[["recalibrate", "refit_decoder", "affine", "prune:wanda:0.5"], "gradient_steps"] == 0).all()
    assert (by_spec.loc[["recalibrate", "refit_decoder", "affine", "prune:wanda:0.5", "retrain"], "tokens_used"] > 0).all()
    assert by_spec.loc["finetune:0.25", "tokens_used"] < by_spec.loc["retrain", "tokens_used"]
    assert set(variants["seed"]) == {0}
    assert variants[["mse", "explained_variance_centred", "l0", "ce_loss_score"]].notna().all().all()
    # Storage: transfer is the original's folder; every other fix its registry folder, each a plain sae-lens SAE.
    assert by_spec.loc["transfer", "sae_prefix"].startswith("saes/original/")
    folders = {"retrain": "retrained", "prune:wanda:0.5": "pruned", "finetune:0.25": "finetuned", "recalibrate": "recalibrated",
               "refit_decoder": "refit_decoder", "affine": "affine"}
    from sae_lens import SAE

    from sae_core.sae_io import decoder_norm_deviation

    for spec, folder in folders.items():
        prefix = by_spec.loc[spec, "sae_prefix"]
        assert prefix.startswith(f"saes/{folder}/"), (spec, prefix)
        manifest = storage.manifest(prefix)
        assert manifest["variant_spec"] == spec and manifest["report"]["spec"] == spec
        assert {"tokens", "gradient_steps", "wall_time_s", "details"} <= set(manifest["report"])
        sae = SAE.load_from_disk(str(storage.materialise_dir(prefix)))
        assert decoder_norm_deviation(sae) < 1e-3
    # Task-run names: the old three keep theirs, the others are <method>-sae.
    names = {r.name.rsplit("-", 1)[0] for r in runs}
    assert {"transfer-sae", "retrain-sae", "prune-sae", "finetune-sae", "recalibrate-sae", "refit-decoder-sae", "affine-sae",
            "feature-identity"} <= names, names


def test_feature_identity_rows_for_every_variant(ladder_run):
    storage_url, summary, _ = ladder_run
    storage = Storage(storage_url)
    assert summary["n_feature_identities"] == len(LADDER)
    rows = storage.read_parquet_prefix("metrics/feature_identity")
    assert set(rows["metric_family"]) == {"feature_identity"} and IDENTITY_METRICS <= set(rows["metric_name"])
    assert sorted(rows["variant_spec"].unique()) == sorted(LADDER)
    value = rows.set_index(["variant_spec", "metric_name"])["value"]
    assert value["transfer", "decoder_cosine_kept_fraction"] == 1.0
    assert value["transfer", "mean_r"] == pytest.approx(value["transfer", "mean_r"])  # finite
    assert 0.0 <= value["retrain", "matched_fraction"] <= 1.0
    assert value["retrain", "identity_kept_fraction"] == value["retrain", "matched_fraction"]
    assert value["affine", "identity_kept_fraction"] == value["affine", "decoder_cosine_kept_fraction"]
    # Joins to the variants table on (sae_prefix, model_prefix).
    variants = storage.read_parquet_prefix("variants")
    joined = rows.merge(variants[["sae_prefix", "model_prefix", "variant_spec"]], on=["sae_prefix", "model_prefix"], suffixes=("", "_row"))
    assert (joined["variant_spec"] == joined["variant_spec_row"]).all() and set(joined["variant_spec"]) == set(LADDER)


def test_cached_rerun_recomputes_nothing(ladder_run):
    from flows.full import full
    from tests.flows.test_flow import states_by_name

    storage_url, _, _ = ladder_run
    storage = Storage(storage_url)
    before = {k: storage.fs.info(storage.path(k))["mtime"] for k in storage.list() if not k.startswith(("reports", "prefect-results"))}
    since = dt.datetime.now(dt.timezone.utc)
    full(preset="toy", overrides=OVERRIDES, storage_url=storage_url)
    states = states_by_name(task_runs_since(since))
    not_cached = {name: s for name, s in states.items() if name not in ("report", "sae-transfer-experiment") and set(s) != {"Cached"}}
    assert not not_cached, not_cached
    assert before == {k: storage.fs.info(storage.path(k))["mtime"] for k in before}, "a cached re-run rewrote artifacts"


def test_a_failing_fix_stores_nothing_and_stops_nothing_else(ladder_run, tmp_path, monkeypatch):
    from flows.full import full
    from sae_core.variants.finetune import FinetuneMethod

    storage_url, _, _ = ladder_run
    shutil.copytree(storage_url.removeprefix("file://"), tmp_path / "store")
    copy_url = f"file://{tmp_path}/store"
    storage = Storage(copy_url)
    finetuned_before = set(storage.list("saes/finetuned"))

    def broken(self, original, inputs):
        raise ValueError("forced failure of this fix")

    monkeypatch.setattr(FinetuneMethod, "_build", broken)
    overrides = {**copy.deepcopy(OVERRIDES), "variants": [*LADDER, "finetune:0.5"]}
    with pytest.raises(RuntimeError, match=r"finetune:0\.5"):
        full(preset="toy", overrides=overrides, storage_url=copy_url)
    assert set(storage.list("saes/finetuned")) == finetuned_before  # nothing stored for the failed fix
    variants = storage.read_parquet_prefix("variants")
    assert sorted(variants["variant_spec"]) == sorted(LADDER)  # every other variant finished (its rows are there)
    latest = sorted(storage.list("reports"))
    assert latest, "the report of the rest was written"


def test_a_new_fix_is_one_file_and_one_registry_entry(ladder_run, monkeypatch):
    """Register ``shift`` (tests/helpers/shift_method.py) by ONE METHODS entry: config validation accepts it
    and the real sae-variant task builds, stores and evaluates it; nothing else is edited."""
    from flows.full import held_out_spec, train_spec
    from sae_core.variants.registry import METHODS, MethodEntry
    from tasks.activations import cache_activations_task
    from tasks.compression import compress_llm
    from tasks.saes import original_sae, sae_variant_task
    from tasks.world import base_model

    monkeypatch.setitem(METHODS, "shift", MethodEntry("tests.helpers.shift_method:ShiftMethod", needs_compressed_activations=True,
                                                      options=("ridge",)))
    config = build_config("toy", {**OVERRIDES, "variants": ["transfer", "shift"]})
    [_, shift] = config.variants
    assert shift.text == "shift" and config.variant_settings(shift)["options"] == {"ridge": config.repair.ridge}

    storage_url, _, _ = ladder_run  # the ladder run's world, served from storage
    hook = config.hook_names()[0]
    dense = base_model.fn(config.model, config.toy_world, storage_url)
    dense_acts = cache_activations_task.fn(dense, train_spec(config, hook), {}, storage_url)
    original = original_sae.fn(dense, hook, None, config.original_sae.train.model_dump(), dense_acts, storage_url, "cpu", config.seed)
    compressed = compress_llm.fn(dense, config.compression[0], config.calibration.model_dump(), storage_url)
    train_acts = cache_activations_task.fn(compressed, train_spec(config, hook), original["processing"], storage_url)
    held_out = cache_activations_task.fn(compressed, held_out_spec(config, hook), original["processing"], storage_url)
    result = sae_variant_task.fn(shift, original, compressed, train_acts, None, held_out, config.variant_settings(shift),
                                 config.quality.model_dump(), config.dataset, storage_url, "cpu", "float32", config.seed)
    storage = Storage(storage_url)
    assert result["sae_prefix"].startswith("saes/shift/") and storage.is_committed(result["sae_prefix"])
    row = result["row"]
    assert (row["variant_spec"], row["variant_method"], row["sae_variant"]) == ("shift", "shift", "shift")
    assert row["tokens_used"] == config.pruned_sae.calibration_tokens and row["gradient_steps"] == 0
    assert storage.manifest(result["sae_prefix"])["report"]["details"]["shift_tokens"] == row["tokens_used"]


# ------------------------------------------------------------------ several SAE seeds in one run
@pytest.mark.parametrize("seeds, message", [([0, 0], "duplicates"), ([], "empty"), ([-1], "non-negative")])
def test_bad_seed_lists_are_config_errors(seeds, message):
    with pytest.raises(ValueError, match=message):
        build_config("toy", {"seeds": seeds})


def test_one_run_builds_every_variant_once_per_seed(prefect_harness, tmp_path):
    """--seeds 0,1: two original SAEs, each with its own variants (trained ones differ, one row per seed), so the
    frontier shows spread; the compressed model and its activations are built once."""
    from flows.full import full
    from sae_core.repair_report import frontier_table

    storage = Storage(f"file://{tmp_path}")
    overrides = {**copy.deepcopy(OVERRIDES), "variants": ["transfer", "recalibrate", "retrain"], "seeds": [0, 1]}
    result = full(preset="toy", overrides=overrides, storage_url=storage.url)
    assert result["n_variants"] == 6 and result["n_feature_identities"] == 6
    rows = storage.read_parquet_prefix("variants")
    assert sorted(rows["seed"]) == [0, 0, 0, 1, 1, 1]
    retrained = rows[rows["variant_spec"] == "retrain"]
    assert retrained["sae_prefix"].nunique() == 2  # each seed's own SAE
    originals = rows[rows["variant_spec"] == "transfer"]["sae_prefix"]
    assert originals.nunique() == 2  # the original SAE is trained once per seed
    assert len({k for k in storage.list("compressed_models") if k.endswith("manifest.json")}) == 1
    table = frontier_table(rows, None)
    assert set(table["n_seeds"]) == {2}
