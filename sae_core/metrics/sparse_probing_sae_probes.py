"""SAEBench *sparse probing, sae-probes variant* (``sparse_probing_sae_probes``) on a given model, via
``sae_bench.evals.sparse_probing_sae_probes.main.run_eval`` (which wraps the ``sae-probes`` package:
k-sparse probes on the SAE latents of a prompt's last token, over binary-classification datasets,
beside a logistic-regression baseline on the model's residual stream).

Why this family: Chanin 2026 ("Are Sparse Autoencoder Benchmarks Reliable?", arXiv 2605.18229)
finds this variant of sparse probing the most reliable of SAEBench's metrics (the reliability facts
are data: ``registry.RELIABILITY``).

SAEBench's ``run_eval`` takes the SAE object but sae-probes loads the model *by name*
(``HookedTransformer.from_pretrained_no_processing``) whenever a dataset's model activations are not
in its cache folder, and keys that folder by the model's name. The adapter therefore writes those
activations itself first, with the given ``HookedTransformer`` and sae-probes' own
``generate_single_dataset_activations``, into ``artifacts_dir/sparse_probing_sae_probes/<hash of
model weights, hook, data, settings>/`` (:meth:`~sae_core.metrics.base.MetricFamily.model_cache_dir`):
sae-probes then finds every file and never loads a model; a pruned model never reads its dense
parent's activations. The LLM baseline's results live in the same folder (they depend on the model
only); each SAE's probe results in a sub-folder named by the SAE's weights.

Data: sae-probes ships its datasets in its wheel (no hub). While the pseudo-id
:data:`~sae_core.datasets.standins.common.SAE_PROBES_DATA` is served locally
(:func:`~sae_core.datasets.mirror.local_folder`: a ``dataset_overrides`` mapping -- the toy and real
profiles' stand-ins, :mod:`sae_core.datasets.standins.sae_probes_data` -- or the site mirror),
:func:`sae_probes_data` points sae-probes' ``DATA_PATH`` at that folder for the run; otherwise its
bundled data is read (the "hub" profile). ``dataset_names=None`` means every dataset the data in force
holds.

Hygiene: sae-probes reads its cached activations with ``torch.load(weights_only=False)``; inside
:func:`sae_probes_data` that load is ``weights_only=True`` (tensors only: nothing is unpickled). It also
sets the model tokenizer's ``padding_side`` / ``truncation_side``; both are restored afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from sae_core.metrics.base import (
    MetricFamily,
    MetricInputs,
    MetricResult,
    MetricSettings,
    eval_output_provenance,
    headline,
    model_fingerprint,
    to_jsonable,
)

#: the k values SAEBench's ``SaeProbesSaeMetrics`` has fields for.
SUPPORTED_KS = (1, 2, 5, 10, 20, 50, 100)


class SparseProbingSaeProbesSettings(MetricSettings):
    """Mirrors ``SparseProbingSaeProbesEvalConfig``; defaults are SAEBench's (and sae-probes' own
    ``max_seq_len`` / ``batch_size`` for the model activations)."""

    #: sae-probes ``<n>_<tag>`` names; None -> every binary dataset of the data in force
    #: (SAEBench's default: all 113 of sae-probes' own).
    dataset_names: list[str] | None = None
    ks: list[int] = [1, 2, 5]
    reg_type: Literal["l1", "l2"] = "l1"
    #: SAEBench aggregates the "normal" setting only.
    setting: Literal["normal"] = "normal"
    binarize: bool = False
    include_llm_baseline: bool = True
    baseline_method: Literal["logreg", "pca", "knn", "xgboost", "mlp"] = "logreg"
    random_seed: int = 42
    #: tokens per prompt for the model activations (sae-probes: ``max_seq_len``, left-truncated).
    context_length: int = 1024
    llm_batch_size: int = 32
    #: None -> the model's own dtype.
    llm_dtype: str | None = None

    @field_validator("ks")
    @classmethod
    def _supported_ks(cls, ks: list[int]) -> list[int]:
        unsupported = [k for k in ks if k not in SUPPORTED_KS]
        if unsupported or not ks:
            raise ValueError(f"ks must be a non-empty subset of {SUPPORTED_KS} (SAEBench's output fields), got {ks}")
        return ks


TOY_DEFAULTS = SparseProbingSaeProbesSettings(context_length=64, llm_batch_size=50)
HUB_DEFAULTS = SparseProbingSaeProbesSettings()


class SparseProbingSaeProbes(MetricFamily):
    name = "sparse_probing_sae_probes"
    settings_cls = SparseProbingSaeProbesSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS
    needs_pad_token = True

    def run(self, inputs: MetricInputs, config: SparseProbingSaeProbesSettings) -> MetricResult:
        from sae_core.datasets.mirror import local_folder
        from sae_core.datasets.standins.common import SAE_PROBES_DATA
        from sae_core.datasets.standins.sae_probes_data import dataset_file, dataset_names, package_dir

        data = local_folder(SAE_PROBES_DATA) or package_dir()
        names = list(config.dataset_names) if config.dataset_names is not None else dataset_names(data)
        missing = [name for name in names if not dataset_file(data, name).is_file()]
        if missing or not names:
            raise ValueError(f"sae-probes data in {data} lacks the dataset(s) {missing or names}; "
                             f"it holds {dataset_names(data)}")
        hooked_model = inputs.hooked_model
        llm_dtype = self.llm_dtype(inputs, config)
        label = inputs.model_name
        with self.saebench(inputs, llm_dtype, seed=config.random_seed, context_size=config.context_length) as sae, \
                sae_probes_data(data), preserved_tokenizer_sides(hooked_model.tokenizer), contextlib.ExitStack() as stack:
            import sae_bench.evals.sparse_probing_sae_probes.main as spp_main
            from sae_bench.evals.sparse_probing_sae_probes.eval_config import SparseProbingSaeProbesEvalConfig
            from sae_probes.generate_model_activations import generate_single_dataset_activations

            hook = sae.cfg.hook_name
            folder = self.model_cache_dir(inputs, hook, config, data_fingerprint(data, names))
            for name in names:  # with the given model object: sae-probes would load one by name
                generate_single_dataset_activations(
                    model=hooked_model, model_name=label, dataset_path=dataset_file(data, name), hook_names=[hook],
                    model_cache_path=folder, device=inputs.device, max_seq_len=config.context_length,
                    batch_size=config.llm_batch_size)
            absent = [name for name in names if not (folder / f"model_activations_{label}" / f"{name}_{hook}.pt").is_file()]
            if absent:
                raise RuntimeError(f"sae-probes wrote no model activations for {absent} (no 'prompt' column?)")
            eval_config = SparseProbingSaeProbesEvalConfig(
                model_name=label, random_seed=config.random_seed, dataset_names=names, reg_type=config.reg_type,
                setting=config.setting, ks=list(config.ks), binarize=config.binarize, results_path=str(folder),
                model_cache_path=str(folder), include_llm_baseline=config.include_llm_baseline,
                baseline_method=config.baseline_method)
            scratch = inputs.scratch_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="sae-probes-"))
            output = Path(scratch) / "sparse_probing_sae_probes"
            release = f"sae-{model_fingerprint(sae)}"  # this SAE's probe results: its own sub-folder
            results = spp_main.run_eval(eval_config, [(release, sae)], inputs.device, str(output), force_rerun=True)
            raw = to_jsonable(results[f"{release}_custom_sae"])
            raw.update(to_jsonable(eval_output_provenance(sae)))  # custom SAE, as every family records it
        metrics = raw["eval_result_metrics"]
        rows = [headline(key, value, True) for part in ("sae", "llm") for key, value in metrics[part].items()
                if value is not None]
        return self.result(raw, rows)


# -- sae-probes' data and file handling, redirected for one run -----------------------------------

_LOCK = threading.RLock()


class _WeightsOnlyTorch:
    """``torch`` as sae-probes' ``utils_data`` sees it inside :func:`sae_probes_data`: ``load`` reads
    tensors only (``weights_only=True``), everything else is torch's."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return self._torch.load(*args, **kwargs)


@contextlib.contextmanager
def sae_probes_data(folder: str | Path) -> Iterator[Path]:
    """Inside the block sae-probes reads its datasets from ``folder`` (laid out like its package
    folder: ``folder/data/probing_datasets_MASTER.csv.zst`` and ``folder/data/cleaned_data/``) and its
    cached activations with ``weights_only=True``; everything is put back on exit.

    Patched: ``DATA_PATH`` of ``sae_probes.utils_data`` / ``.generate_model_activations``, the
    ``DATASET_SIZES`` dicts sae-probes computes at import (``run_sae_evals``,
    ``generate_sae_activations``, ``run_baselines``), ``utils_data.torch`` (:class:`_WeightsOnlyTorch`),
    and the ``functools.cache`` of its readers (cleared on entry and exit).
    """
    from sae_core.datasets.standins.sae_probes_data import DATA_SUBFOLDER

    with _LOCK:
        # importlib: the package's __init__ shadows the submodule ``run_sae_evals`` with its function
        model_acts, sae_acts, baselines, sae_evals, utils_data = (importlib.import_module(f"sae_probes.{name}") for name in (
            "generate_model_activations", "generate_sae_activations", "run_baselines", "run_sae_evals", "utils_data"))

        readers = (utils_data.get_binary_df, utils_data.read_dataset_df, utils_data.get_dataset_sizes)
        saved = [(module, attribute, getattr(module, attribute)) for module, attribute in (
            (utils_data, "DATA_PATH"), (model_acts, "DATA_PATH"), (utils_data, "torch"),
            (sae_evals, "DATASET_SIZES"), (sae_acts, "DATASET_SIZES"), (baselines, "DATASET_SIZES"))]
        data_path = Path(folder) / DATA_SUBFOLDER
        try:
            utils_data.DATA_PATH = model_acts.DATA_PATH = data_path
            utils_data.torch = _WeightsOnlyTorch(saved[2][2])
            for reader in readers:
                reader.cache_clear()
            sizes = utils_data.get_dataset_sizes()
            sae_evals.DATASET_SIZES = sae_acts.DATASET_SIZES = baselines.DATASET_SIZES = sizes
            yield data_path
        finally:
            for module, attribute, value in saved:
                setattr(module, attribute, value)
            for reader in readers:
                reader.cache_clear()


@contextlib.contextmanager
def preserved_tokenizer_sides(tokenizer: Any) -> Iterator[None]:
    """sae-probes sets ``truncation_side = "left"`` and ``padding_side = "right"`` on the model's
    tokenizer; the pipeline's tokenizer keeps its own."""
    saved = {side: getattr(tokenizer, side, None) for side in ("padding_side", "truncation_side")}
    try:
        yield
    finally:
        for side, value in saved.items():
            if value is not None:
                setattr(tokenizer, side, value)


def data_fingerprint(folder: str | Path, names: list[str]) -> str:
    """Hash of the dataset files used (a stand-in and the bundled data may share dataset names)."""
    from sae_core.datasets.standins.sae_probes_data import dataset_file

    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(hashlib.sha256(dataset_file(folder, name).read_bytes()).digest())
    return digest.hexdigest()[:16]
