"""The metric families, as data: name -> :class:`~sae_core.metrics.base.MetricFamily` object.

Every family has the one signature of :meth:`MetricFamily.run <sae_core.metrics.base.MetricFamily.run>`::

    family.run(inputs: MetricInputs, config: <Metric>Settings) -> MetricResult

called through :meth:`MetricFamily.evaluate <sae_core.metrics.base.MetricFamily.evaluate>` (settings
defaulted, timing). :class:`~sae_core.metrics.base.MetricInputs` holds ``sae``: any ``sae_lens.SAE``
(standard/ReLU, TopK, JumpReLU, ...) whose ``cfg.metadata.hook_name`` is a TransformerLens hook of
``hooked_model``; it is copied, never modified. ``hooked_model``: ``HookedTransformer`` (core,
absorption, scr, tpp, sparse_probing, autointerp, sparse_probing_sae_probes); ``hf_model``: ``transformers.PreTrainedModel``
with the same weights (ravel, ``model_kind="hf"``); ``tokenizer``: the HF tokenizer (ravel; the
others use ``hooked_model.tokenizer``). Models must already be on ``device``. ``artifacts_dir``:
where SAEBench may write caches / outputs (see each module); ``scratch_dir``: throw-away outputs.
:func:`run_metric` is the entry point: it resolves the settings of a profile, builds the inputs once
and serves the profile's datasets around ``family.evaluate``.

Profiles: ``toy_defaults`` are tiny CPU settings for the offline toy world (use together with
``dataset_overrides(build_eval_datasets(...))``); "real" is ``hub_defaults`` with CPU-sized sizes
(``REAL_OVERRIDES``; SAEBench's thresholds unchanged) on the real-language stand-ins; ``hub_defaults`` are SAEBench's own defaults on
its hub datasets (core: the paper's context 128, 16 prompts per batch, 200 reconstruction and 2000
sparsity/variance batches, special tokens excluded).

Importing this module is light (no torch, no SAEBench: families import those when they run), so
:mod:`sae_core.config` takes its metric names from :data:`METRIC_NAMES`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sae_core.metrics import absorption, autointerp, core, ravel, scr_tpp, sparse_probing, sparse_probing_sae_probes
from sae_core.metrics.base import (
    PROFILES,
    MetricFamily,
    MetricInputs,
    MetricResult,
    MetricSettings,
    Reliability,
    sae_bench_version,
)


# The "real" profile: SAEBench's own settings and thresholds with only the *sizes* cut, so that all
# six families on four SAE variants of a ~270M model fit a 30-minute cold run on 2 CPU cores. The
# datasets are the real-language stand-ins (sae_core.datasets.standins; amazon reviews have none, so
# SCR/TPP use bias-in-bios set 1 only). Probing texts are cut to 64 tokens (the templated bios are
# shorter than that). Measured per family (docs/results-gemma-3-270m.md): SCR's cost is per class
# pair (311 s for the first SAE with SAEBench's four pairs, 135 s for each further one), so SCR takes
# its first two pairs; sparse probing takes bias-in-bios set 1, code and language id; RAVEL trains its
# MDBM for one epoch on 40 pairs per attribute (one forward of the 262k-row head per pair and step).
_BIOS = ["LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3"]
_REAL_PROBING = dict(context_length=64, sae_batch_size=64, llm_batch_size=16)
_REAL_SCR_TPP = dict(**_REAL_PROBING, dataset_names=_BIOS[:1], train_set_size=200, test_set_size=100, probe_epochs=10,
                     early_stopping_patience=10, probe_test_batch_size=100, n_values=[2, 5, 10, 20])  # @20: the paper's column
REAL_OVERRIDES: dict[str, dict[str, Any]] = {
    # 2 prompts per batch: one [batch, 128, 262144] float32 logits tensor is 268 MB per prompt, and
    # sae-lens holds several at once (clean, spliced, ablated, KL) -- 8 prompts took a run past 11 GB.
    # 4 x 2 x 128 tokens for CE / KL: each runs the 262k-row unembedding three times, most of core's cost.
    "core": dict(context_size=128, batch_size_prompts=2, n_eval_reconstruction_batches=4, n_eval_sparsity_variance_batches=8,
                 streaming=False),
    "absorption": dict(llm_batch_size=8, k_sparse_probe_num_epochs=20, k_sparse_probe_batch_size=1024,
                       eval_k_sparse_probe_batch_size=64, precalc_k_sparse_probe_sae_acts=True),
    "scr": dict(**_REAL_SCR_TPP, column1_vals_lookup={_BIOS[0]: [("professor", "nurse"), ("architect", "journalist")]}),
    "tpp": _REAL_SCR_TPP,
    "sparse_probing": dict(**_REAL_PROBING, dataset_names=[_BIOS[0], "codeparrot/github-code", "Helsinki-NLP/europarl"],
                           probe_train_set_size=200, probe_test_set_size=100),
    # Language left out: the 50%-pruned Gemma 3 270M names 4 of 40 cities' languages (sae_core.datasets.standins.ravel).
    "ravel": dict(entity_attribute_selection={"city": ["Country", "Continent"]}, top_n_entities=40,
                  num_pairs_per_attribute=40, num_epochs=1, llm_batch_size=8, n_generated_tokens=4),
    "autointerp": None,
    # sae-probes' own datasets, 1,200 balanced rows each (sae_core.datasets.standins.sae_probes_data); short prompts.
    "sparse_probing_sae_probes": dict(context_length=64, llm_batch_size=16),
}

# What is known about how far each family's figures can be trusted: the one source of the report's
# reliability marks and notes (render_reliability). Families without an entry carry no mark.
CHANIN_2026 = 'Chanin 2026, "Are Sparse Autoencoder Benchmarks Reliable?", arXiv 2605.18229'
_SCR_TPP_FINDING = "fails several reliability tests; the authors advise against using it"
RELIABILITY: dict[str, Reliability] = {
    "scr": Reliability("low reliability", _SCR_TPP_FINDING, CHANIN_2026),
    "tpp": Reliability("low reliability", _SCR_TPP_FINDING, CHANIN_2026),
    "absorption": Reliability(
        "SAEBench {sae_bench}",
        "SAEBench changed the absorption fraction's definition between versions (a threshold was added; scores "
        "are about 10x lower than the v0.3.2 figures published with SAEBench): compare an absorption figure with "
        "a paper's only at the same SAEBench version"),
    "sparse_probing_sae_probes": Reliability(
        "most reliable", "the sae-probes variant of sparse probing is the most reliable of SAEBench's metrics in "
        "Chanin 2026's tests (the other metrics are noisier than assumed)", CHANIN_2026),
}

#: The families, in the order configs, presets and reports list them; "real" sizes from REAL_OVERRIDES,
#: reliability facts from RELIABILITY.
FAMILIES: tuple[MetricFamily, ...] = tuple(
    family(real_overrides=REAL_OVERRIDES.get(family.name), reliability=RELIABILITY.get(family.name))
    for family in (core.Core, absorption.Absorption, scr_tpp.Scr, scr_tpp.Tpp, sparse_probing.SparseProbing, ravel.Ravel,
                   autointerp.AutoInterp, sparse_probing_sae_probes.SparseProbingSaeProbes)
)
METRICS: dict[str, MetricFamily] = {family.name: family for family in FAMILIES}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)

__all__ = ["FAMILIES", "METRICS", "METRIC_NAMES", "PROFILES", "REAL_OVERRIDES", "RELIABILITY", "MetricFamily", "MetricInputs",
           "Reliability", "get_metric", "real_dataset_paths", "render_reliability", "run_metric", "sae_bench_version",
           "settings_for", "toy_dataset_paths"]


def get_metric(name: str) -> MetricFamily:
    """The family of metric ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}") from None


def render_reliability(columns) -> tuple[dict[str, str], list[str]]:
    """The reliability marks of a report table whose columns are ``family/metric`` names (others pass
    through): ``({column: column with its family's mark}, markdown note lines)``. The marks and notes
    come from each family's ``reliability`` (:data:`RELIABILITY`), for the families among ``columns``."""
    renamed: dict[str, str] = {}
    shown: list[MetricFamily] = []
    for column in columns:
        family = METRICS.get(str(column).split("/", 1)[0]) if "/" in str(column) else None
        if family is None or family.reliability is None:
            continue
        renamed[column] = f"{column} [{family.reliability.rendered_mark()}]"
        if family not in shown:
            shown.append(family)
    notes = []
    if shown:
        notes = ["Reliability marks (in brackets beside a column):", ""]
        for family in shown:
            facts = family.reliability
            source = f" ({facts.source})" if facts.source else ""
            notes.append(f"- **{family.name}** [{facts.rendered_mark()}]: {facts.finding}{source}.")
        notes.append("")
    return renamed, notes


def settings_for(metric: str, profile: str = "hub", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full settings of ``metric`` under ``profile`` ("toy" | "real" | "hub") plus ``overrides``, as a
    JSON-able dict (validated: unknown keys or wrong types raise)."""
    return get_metric(metric).settings(profile, **(overrides or {})).model_dump(mode="json")


def toy_dataset_paths(cache_root: str | Path, seed: int = 0) -> dict[str, Path]:
    """The toy-world stand-ins for every SAEBench dataset, built once under ``cache_root``."""
    from sae_core.datasets.standins import real
    from sae_core.datasets.standins.toy import build_eval_datasets

    return _built_dataset_paths(build_eval_datasets, "toy_eval_datasets", cache_root, seed,
                                fingerprint=real.source_fingerprint())


def real_dataset_paths(cache_root: str | Path, seed: int = 0) -> dict[str, Path]:
    """The real-language stand-ins (sae_core.datasets.standins.real) for every SAEBench dataset, built once."""
    from sae_core.datasets.standins import real

    return _built_dataset_paths(real.build_real_eval_datasets, "real_eval_datasets", cache_root, seed,
                                fingerprint=real.source_fingerprint())


def _built_dataset_paths(build, name: str, cache_root: str | Path, seed: int, fingerprint: str = "") -> dict[str, Path]:
    """Stand-ins built once by ``build(folder, seed=seed)`` under ``cache_root`` (keyed by the builder's code).

    Building is deterministic per seed; a finished build is reused. Concurrent callers build into
    private folders and atomically rename, so a reader never sees half a build.
    """
    final = Path(cache_root) / f"{name}-seed{seed}{'-' + fingerprint if fingerprint else ''}"
    marker = final / "paths.json"
    if not marker.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
        try:
            paths = build(staging, seed=seed)
            (staging / "paths.json").write_text(json.dumps({k: os.path.relpath(v, staging) for k, v in paths.items()}))
            try:
                staging.rename(final)
            except OSError:  # another process finished first
                pass
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return {k: final / v for k, v in json.loads(marker.read_text()).items()}


def run_metric(
    name: str,
    sae: Any,
    hooked_model: Any,
    hf_model: Any,
    tokenizer: Any,
    settings: MetricSettings | dict[str, Any] | None = None,
    profile: str = "hub",
    artifacts_dir: str | Path = "artifacts",
    device: str = "cpu",
    scratch_dir: str | Path | None = None,
    seed: int = 0,
    dataset_paths: dict[str, str | Path] | None = None,
    llm_cache_dir: str | Path | None = None,
) -> MetricResult:
    """Run metric ``name`` on ``sae`` and the given model objects.

    ``settings``: a settings object, a dict (full settings as from :func:`settings_for`, or just
    overrides of ``profile``'s defaults), or None for ``profile``'s defaults.
    ``profile``: "hub" -- SAEBench's datasets from the hub; "toy" -- the toy-world stand-ins
    (built with ``seed`` under ``artifacts_dir``); "real" -- the real-language stand-ins of
    :mod:`sae_core.datasets.standins.real` with CPU-sized settings; stand-ins are served through
    :func:`~sae_core.datasets.mirror.dataset_overrides`. ``dataset_paths`` (hub id ->
    local folder) adds or replaces stand-ins under either profile.
    ``artifacts_dir``: SAEBench caches (LLM activations, probes, RAVEL prompt sets), keyed by model
    weights so base and pruned models never share them. ``llm_cache_dir``: where the SAE-independent
    LLM-side caches of sparse probing, SCR/TPP, absorption and RAVEL persist, in safe formats only
    (:mod:`sae_core.metrics.safe_cache`; None: under ``artifacts_dir``). ``scratch_dir``: throw-away outputs
    (default: a temporary folder). ``device``: where the models already are.
    """
    from sae_core.datasets.mirror import dataset_overrides

    family = get_metric(name)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    config = family.resolve_settings(settings, profile)
    overrides: dict[str, Any] = {}
    if profile == "toy":
        overrides.update(toy_dataset_paths(Path(artifacts_dir), seed))
    elif profile == "real":
        overrides.update(real_dataset_paths(Path(artifacts_dir), seed))
    overrides.update(dataset_paths or {})
    with contextlib.ExitStack() as stack:
        if scratch_dir is None:
            scratch_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"sae-bench-{name}-"))
        stack.enter_context(dataset_overrides(overrides))
        inputs = MetricInputs(sae=sae, hooked_model=hooked_model, hf_model=hf_model, tokenizer=tokenizer,
                              artifacts_dir=artifacts_dir, device=device, scratch_dir=scratch_dir,
                              llm_cache_dir=llm_cache_dir)
        return family.evaluate(inputs, config)
