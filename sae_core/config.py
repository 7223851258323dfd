"""The one experiment configuration: a validated pydantic object, loaded from preset data files.

Presets live in ``sae_core/presets/*.yaml`` (toy, gpt2-small, gemma-2-2b, gemma-3-270m); where the original
SAEs of a hub model come from lives in ``sae_core/presets/sae_releases.yaml``. Everything is
checked here, before any task runs: unknown preset, metric, hook type, bad sparsities, ...
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from sae_core.compression import CompressionSpec, parse_spec
from sae_core.compression.registry import method_names
from sae_core.datasets import check_dataset_name
from sae_core.metrics.registry import METRIC_NAMES as KNOWN_METRICS  # light: no torch / SAEBench
from sae_core.model_sources import is_packaged_model, packaged_model
from sae_core.sae_prune_rules import RULES as SAE_PRUNING_RULES  # pruned_sae.rules
from sae_core.toy.world import TOY_MODEL, ToyWorldConfig
from sae_core.variants import METHODS as VARIANT_METHODS  # light: spec text, parser, method table (no torch)
from sae_core.variants import VariantSpec

PRESET_DIR = Path(__file__).parent / "presets"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_specs(values: list[CompressionSpec], what: str) -> list[CompressionSpec]:
    """A non-empty list of compression specs, none twice (canonical text: 'magnitude_row:0.5' and 'magnitude:0.5' are one)."""
    if not values:
        raise ValueError(f"{what} is empty; give at least one spec, e.g. 'wanda:0.5'")
    texts = [v.text for v in values]
    duplicates = sorted({t for t in texts if texts.count(t) > 1})
    if duplicates:
        raise ValueError(f"{what} has duplicates: {duplicates} (in {texts})")
    return values


def _check_seed_list(values: list[int], what: str) -> list[int]:
    """A non-empty list of distinct, non-negative SAE seeds."""
    if not values:
        raise ValueError(f"{what} is empty; give at least one seed, e.g. [0, 1, 2]")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} has duplicates: {duplicates} (in {values})")
    negative = [v for v in values if v < 0]
    if negative:
        raise ValueError(f"{what} must be non-negative integers, got {negative} (in {values})")
    return values


def _check_fraction(values: list[float], what: str) -> list[float]:
    for value in values:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {value}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has duplicates: {values}")
    return values


class ActivationSettings(_Frozen):
    n_tokens: int = Field(gt=0, le=10_000_000_000)
    seq_len: int = Field(128, ge=2)
    batch_sequences: int = Field(16, ge=1)
    shard_sequences: int = Field(256, ge=1)


class CalibrationSettings(_Frozen):
    """The calibration windows of every calibrated compression method (wanda, sparsegpt, gptq) and the
    module groups every method compresses. Part of each compressed model's cache key."""

    dataset: str
    n_samples: int = Field(128, gt=0)  # calibration windows
    seq_len: int = Field(128, ge=2)  # tokens per window
    seed: int = 0  # which windows are drawn
    module_groups: list[Literal["attention", "mlp"]] = ["attention", "mlp"]

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        check_dataset_name(value)
        return value

    @field_validator("module_groups")
    @classmethod
    def _groups(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("calibration.module_groups is empty; name attention, mlp or both")
        return values


# ------------------------------------------------------------------ deprecated: llm_pruning
# The old section, still read: its calibration fields map onto ``calibration``, its method x
# sparsities (x structure) give ``compression`` when that is not set.
_LEGACY_CALIBRATION = {"calibration_dataset": "dataset", "n_calibration_samples": "n_samples", "seq_len": "seq_len",
                       "seed": "seed", "module_groups": "module_groups"}
_LEGACY_COMPRESSION = ("method", "sparsities", "structure")


class LegacyLLMPruningSettings(_Frozen):
    """The deprecated ``llm_pruning`` section (see ``_LEGACY_CALIBRATION``); validated for its error messages."""

    method: str = "wanda"
    sparsities: list[float] = [0.5]
    structure: str = "unstructured"
    module_groups: list[Literal["attention", "mlp"]] = ["attention", "mlp"]
    calibration_dataset: str | None = None
    n_calibration_samples: int = Field(128, gt=0)
    seq_len: int = Field(128, ge=2)
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        known = method_names("sparsity")
        if value not in known:
            raise ValueError(f"unknown LLM pruning method {value!r}; known: {list(known)}")
        return value

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("llm_pruning.sparsities is empty")
        return _check_fraction(values, "LLM sparsity")

    @field_validator("structure")
    @classmethod
    def _structure(cls, value: str) -> str:
        if value == "unstructured":
            return value
        try:
            n, m = (int(x) for x in value.split(":"))
        except ValueError:
            raise ValueError(f"structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {value!r}") from None
        if not 0 < n < m:
            raise ValueError(f"N:M structure needs 0 < N < M, got {value!r}")
        return value

    def specs(self) -> list[str]:
        strengths = [self.structure] if self.structure != "unstructured" else [repr(float(s)) for s in self.sparsities]
        return [f"{self.method}:{s}" for s in strengths]


def _legacy_llm_pruning(data: dict) -> dict:
    """Map a deprecated ``llm_pruning`` section onto ``calibration`` (+ ``compression``), with one warning."""
    old = data["llm_pruning"]
    calibration = {**{new: old[key] for key, new in _LEGACY_CALIBRATION.items() if key in old},
                   **(data.get("calibration") or {})}  # a ``calibration`` given beside it wins
    data = {**data, "calibration": calibration}
    try:
        legacy = LegacyLLMPruningSettings.model_validate(old)
    except ValueError:
        return data  # the llm_pruning field's own validation reports it, naming llm_pruning.<field>
    derived = data.get("compression") is None and any(key in old for key in _LEGACY_COMPRESSION)
    if derived:
        data["compression"] = legacy.specs()
    data.pop("llm_pruning")
    instead = ", ".join(f"{k}: {v!r}" for k, v in calibration.items())
    compression = f" and compression: {data['compression']!r}" if derived else ""
    warnings.warn(f"config key 'llm_pruning' is deprecated; write calibration: {{{instead}}}{compression} instead",
                  DeprecationWarning, stacklevel=2)
    return data


class TrainSAESettings(_Frozen):
    architecture: Literal["topk", "jumprelu", "standard"] = "topk"
    d_sae: int = Field(gt=0)
    k: int | None = Field(None, gt=0)
    train_tokens: int = Field(gt=0)
    # Passes over the cached training activations. 1: train on train_tokens tokens (more than the cache
    # repeats it, reshuffled); N > 1: N epochs of train_tokens tokens each (at most activations.n_tokens),
    # every epoch in a fresh order drawn from the seed. The budget is train_tokens x epochs.
    epochs: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(4096, gt=0)
    # Steps without firing after which sae-lens counts a latent dead, which switches on the TopK
    # auxiliary loss for it. sae-lens' default (None here) is 1,000 steps: a run of fewer steps never
    # revives a latent. Short CPU runs set it to a few percent of their steps.
    dead_feature_window: int | None = Field(None, gt=0)
    # "mean": the decoder bias starts at the activations' mean (sae_core.sae_train.train_sae); needed
    # where the residual stream has a large common direction, as Gemma's does.
    b_dec_init: Literal["zeros", "mean"] = "zeros"
    # The learning rate decays linearly to 0 over this final fraction of the steps (0: constant).
    lr_decay_fraction: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _k_for_topk(self):
        if self.architecture == "topk" and self.k is None:
            raise ValueError("a topk SAE needs k")
        return self


class OriginalSAESettings(_Frozen):
    """Where the SAE trained on the dense model comes from: trained here, a release, or folders."""

    train: TrainSAESettings | None = None
    release: str | None = None  # "from_registry" = sae_releases.yaml, or an explicit sae-lens release
    sae_id_template: str | None = None
    local_folders: dict[str, str] | None = None  # hook name -> sae-lens folder

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [x is not None for x in (self.train, self.release, self.local_folders)]
        if sum(given) != 1:
            raise ValueError("original_sae needs exactly one of: train, release, local_folders")
        return self


class RetrainSettings(_Frozen):
    """The retrained SAE copies the original's architecture, width and k; budget and optimiser are here."""

    enabled: bool = True
    train_tokens: int = Field(gt=0)
    epochs: int = Field(1, ge=1)  # as TrainSAESettings.epochs; finetune:F trains F x train_tokens x epochs
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(4096, gt=0)
    dead_feature_window: int | None = Field(None, gt=0)  # as TrainSAESettings.dead_feature_window
    b_dec_init: Literal["zeros", "mean"] = "zeros"  # as TrainSAESettings.b_dec_init
    lr_decay_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # as TrainSAESettings.lr_decay_fraction


class PrunedSAESettings(_Frozen):
    rules: list[str] = list(SAE_PRUNING_RULES)
    sparsities: list[float] = [0.25, 0.5, 0.75]
    calibration_tokens: int = Field(gt=0)

    @field_validator("rules")
    @classmethod
    def _rules(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in SAE_PRUNING_RULES:
                raise ValueError(f"unknown SAE pruning rule {value!r}; known: {list(SAE_PRUNING_RULES)}")
        return values

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, values: list[float]) -> list[float]:
        return _check_fraction(values, "SAE sparsity")


class RepairSettings(_Frozen):
    """The gradient-free SAE fixes (``recalibrate``, ``refit_decoder``, ``affine``; sae_core/variants) and the
    feature-identity rows of every variant. Training fixes (``retrain``, ``finetune:F``) take their budget and
    optimiser from ``retrained_sae``; ``prune:RULE:S`` its calibration budget from ``pruned_sae``."""

    # Compressed-model activations (and dense ones on the same tokens) the fixes fit on; None: as many as
    # pruned_sae.calibration_tokens (prune's calibration budget), capped by the cached training activations.
    n_tokens: int | None = Field(None, gt=0, le=10_000_000_000)
    ridge: float = Field(1e-6, ge=0.0)  # refit_decoder / affine: ridge strength, relative to the mean squared input
    rescale: bool = True  # recalibrate: match the total variance too, not only the mean (needs dense activations)
    # Feature identity (metrics/feature_identity/): decoder cosines, matching and per-latent code fidelity of every
    # variant against the original, on the dense and compressed models' held-out activations (same tokens).
    identity: bool = True


class QualitySettings(_Frozen):
    n_tokens: int = Field(20_000, gt=0)
    ce_sequences: int = Field(32, gt=0)


class MatchSettings(_Frozen):
    """Tune ``method``'s sparsity by bisection on [lo, hi] until its held-out perplexity matches the
    ``reference`` compression's, then compare which features the two damage (Duan's 6 steps on [0, 0.8])."""

    method: str
    reference: CompressionSpec  # parsed here, once, like ``compression``; written out as its canonical text
    lo: float = Field(0.0, ge=0.0, lt=1.0)
    hi: float = Field(0.8, gt=0.0, lt=1.0)
    steps: int = Field(6, ge=1, le=12)

    @field_serializer("reference")
    def _reference_text(self, value: CompressionSpec) -> str:
        return value.text

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        try:
            return parse_spec(f"{value}:0.5").method  # canonical name (aliases resolved)
        except ValueError as err:
            raise ValueError(f"feature_audit.match tunes a sparsity, which method {value!r} does not have: {err}") from None

    @model_validator(mode="after")
    def _bounds(self):
        if not self.lo < self.hi:
            raise ValueError(f"feature_audit.match needs lo < hi, got [{self.lo}, {self.hi}]")
        return self


class FeatureAuditSettings(_Frozen):
    """The feature-level audit of the original SAE on each compressed model (sae_core/feature_audit.py).

    Its thresholds are constants there, Duan's (arXiv 2606.03002): active = fires on > 0.1% of
    dense tokens, survived r > 0.9, damaged r < 0.5. Cost: two forward passes over ``n_tokens``.
    """

    enabled: bool = False
    n_tokens: int = Field(100_000, gt=0, le=10_000_000_000)
    seq_len: int | None = Field(None, ge=3)  # None: the activations' seq_len
    batch_sequences: int = Field(16, ge=1)
    subsets: int = Field(3, ge=2)  # disjoint token subsets for the noise floor
    # Matched-perplexity comparisons, e.g. [{method: magnitude, reference: "wanda:0.5"}].
    match: list[MatchSettings] = []
    # What the audit covers. None: every spec of ``compression``, every run layer, every seed a layer runs.
    # A spec not in ``compression`` is compressed for the audit (and its feature cards) alone: no SAE variant or
    # metric is built on it. Layers and seeds must be the run's (checked in ExperimentConfig, before any work).
    compressions: list[CompressionSpec] | None = None
    layers: list[int] | None = None
    seeds: list[int] | None = None
    # Perplexity of both models on only the first audit windows covering this many tokens; the other batches
    # stop at the hook, skipping the full-vocabulary head (the dominant cost on Gemma's 262k vocabulary). The
    # feature statistics still cover all n_tokens. None: perplexity on every audit token.
    perplexity_tokens: int | None = Field(None, gt=0, le=10_000_000_000)

    @field_validator("compressions")
    @classmethod
    def _compressions(cls, values: list[CompressionSpec] | None) -> list[CompressionSpec] | None:
        return None if values is None else _check_specs(values, "feature_audit.compressions")

    @field_serializer("compressions")
    def _compressions_text(self, values: list[CompressionSpec] | None) -> list[str] | None:
        return None if values is None else [v.text for v in values]

    @field_validator("layers")
    @classmethod
    def _layers(cls, values: list[int] | None) -> list[int] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("feature_audit.layers is empty; leave it out to audit every run layer")
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"feature_audit.layers has duplicates: {duplicates} (in {values})")
        return values

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int] | None) -> list[int] | None:
        return None if values is None else _check_seed_list(values, "feature_audit.seeds")

    @model_validator(mode="after")
    def _perplexity_tokens(self):
        if self.perplexity_tokens is not None and self.perplexity_tokens > self.n_tokens:
            raise ValueError(f"feature_audit.perplexity_tokens={self.perplexity_tokens} exceeds feature_audit.n_tokens="
                             f"{self.n_tokens}; give at most n_tokens, or leave it out for perplexity on every audit token")
        return self


class ExperimentConfig(_Frozen):
    name: str
    model: str
    toy_world: ToyWorldConfig | None = None
    dataset: str
    layers: list[int]
    hook_types: list[str]
    activations: ActivationSettings
    calibration: CalibrationSettings
    # Compression specs of the LLM ("wanda:0.5", "sparsegpt:2:4", "rtn:4", ...; sae_core/compression),
    # parsed here, once: downstream code receives these objects. Written out as canonical text.
    compression: list[CompressionSpec] = [CompressionSpec(method="wanda", sparsity=0.5)]
    # Deprecated (see _legacy_llm_pruning); only ever set while a bad section is being reported.
    llm_pruning: LegacyLLMPruningSettings | None = Field(None, exclude=True)
    original_sae: OriginalSAESettings
    retrained_sae: RetrainSettings
    pruned_sae: PrunedSAESettings
    # The SAE variants built for each (hook, compressed model): "transfer", "retrain", "prune:wanda:0.5",
    # "finetune:0.05", "recalibrate", "refit_decoder", "affine" (sae_core/variants), parsed here, once, and written
    # out as canonical text. Not given: derived from retrained_sae.enabled and pruned_sae.rules x sparsities.
    variants: list[VariantSpec] | None = None
    repair: RepairSettings = RepairSettings()
    quality: QualitySettings = QualitySettings()
    feature_audit: FeatureAuditSettings = FeatureAuditSettings()
    metrics: list[str] = list(KNOWN_METRICS)
    # toy: tiny settings + toy stand-ins; real: CPU-sized settings + real-language stand-ins; hub: SAEBench's own
    metric_profile: Literal["toy", "real", "hub"] = "toy"
    metric_overrides: dict[str, dict[str, Any]] = {}
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    # SAE seeds of one run (trained SAEs, their batch order, SAEBench's draws): every variant and metric is
    # built once per seed, so tables show spread over seeds. Not given: [seed].
    seeds: list[int] | None = None
    # Fewer (or other) seeds at some layers, e.g. {3: [0], 12: [0]} with seeds [0, 1, 2]: the spread over seeds at
    # one layer, the depth trend from one seed elsewhere. Keys are run layers; each list a subset of the run seeds.
    # A layer not listed runs every run seed.
    layer_seeds: dict[int, list[int]] | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int] | None) -> list[int] | None:
        return None if values is None else _check_seed_list(values, "seeds")

    @field_validator("layer_seeds")
    @classmethod
    def _layer_seeds(cls, values: dict[int, list[int]] | None) -> dict[int, list[int]] | None:
        if values is None:
            return None
        for layer, seeds in values.items():
            _check_seed_list(seeds, f"layer_seeds[{layer}]")
        return values

    def run_seeds(self) -> list[int]:
        """The SAE seeds of this run: ``seeds``, or ``[seed]``. A layer may run fewer (:meth:`seeds_at`)."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def seeds_at(self, layer: int) -> list[int]:
        """The SAE seeds built at ``layer``: its ``layer_seeds`` entry, else every run seed (in the run's order)."""
        chosen = (self.layer_seeds or {}).get(layer)
        return self.run_seeds() if chosen is None else [s for s in self.run_seeds() if s in chosen]

    def hook_seeds(self, hook_name: str) -> list[int]:
        """The SAE seeds built for ``hook_name`` (its layer's, :meth:`seeds_at`)."""
        return self.seeds_at(self.layer_of(hook_name))

    # ------------------------------------------------------------ what the feature audit covers
    def audit_compressions(self) -> list[CompressionSpec]:
        """The compressed models the feature audit runs on: ``feature_audit.compressions``, else ``compression``."""
        chosen = self.feature_audit.compressions
        return list(self.compression) if chosen is None else list(chosen)

    def audit_only_compressions(self) -> list[CompressionSpec]:
        """Audit specs not in ``compression``: compressed for the audit alone (no SAE variants or metrics)."""
        run = {spec.text for spec in self.compression}
        return [spec for spec in self.audit_compressions() if spec.text not in run]

    def audit_hooks(self) -> list[str]:
        """The hooks whose original SAE is audited: those of ``feature_audit.layers``, else every hook."""
        layers = self.feature_audit.layers
        return [h for h in self.hook_names() if layers is None or self.layer_of(h) in layers]

    def audit_seeds(self, hook_name: str) -> list[int]:
        """The original SAEs of ``hook_name`` that are audited, by seed: ``feature_audit.seeds`` (else every seed the
        layer runs); one loaded (not trained) SAE serves every seed, so it is audited once, at the first."""
        chosen = self.feature_audit.seeds
        seeds = [s for s in self.hook_seeds(hook_name) if chosen is None or s in chosen]
        return seeds if self.original_sae.train is not None else seeds[:1]

    @model_validator(mode="before")
    @classmethod
    def _deprecated_llm_pruning(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("llm_pruning"), dict):
            return _legacy_llm_pruning(data)
        return data

    @field_validator("compression")
    @classmethod
    def _compression(cls, values: list[CompressionSpec]) -> list[CompressionSpec]:
        return _check_specs(values, "compression")

    @field_validator("variants")
    @classmethod
    def _variants(cls, values: list[VariantSpec] | None) -> list[VariantSpec] | None:
        if values is None:
            return None
        if not values:
            raise ValueError(f"variants is empty; give at least one SAE variant spec, e.g. 'transfer' (known: {sorted(VARIANT_METHODS)})")
        texts = [v.text for v in values]  # canonical: 'finetune:0.050' and 'finetune:0.05' are one spec
        duplicates = sorted({t for t in texts if texts.count(t) > 1})
        if duplicates:
            raise ValueError(f"variants has duplicates: {duplicates} (in {texts})")
        return values

    @field_serializer("variants")
    def _variants_text(self, values: list[VariantSpec] | None) -> list[str] | None:
        return None if values is None else [v.text for v in values]

    @model_validator(mode="after")
    def _derived_variants(self):
        if self.variants is None:  # today's three kinds, in the flow's order, from their own sections
            derived = ["transfer"] + (["retrain"] if self.retrained_sae.enabled else [])
            derived += [f"prune:{rule}:{sparsity!r}" for rule in self.pruned_sae.rules for sparsity in self.pruned_sae.sparsities]
            object.__setattr__(self, "variants", [VariantSpec.model_validate(text) for text in derived])  # frozen: set once, here
        return self

    @field_serializer("compression")
    def _compression_text(self, values: list[CompressionSpec]) -> list[str]:
        return [v.text for v in values]  # what people write, and what validates back to the same specs

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in KNOWN_METRICS:
                raise ValueError(f"unknown metric {value!r}; known: {list(KNOWN_METRICS)}")
        return values

    @field_validator("hook_types")
    @classmethod
    def _hook_types(cls, values: list[str]) -> list[str]:
        known = sae_registry()["hook_types"]
        for value in values:
            if value not in known:
                raise ValueError(f"unknown hook type {value!r}; known: {sorted(known)}")
        if not values:
            raise ValueError("hook_types is empty")
        return values

    @field_validator("layers")
    @classmethod
    def _layers(cls, values: list[int]) -> list[int]:
        if not values or any(v < 0 for v in values):
            raise ValueError(f"layers must be a non-empty list of non-negative ints, got {values}")
        return values

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        check_dataset_name(value)
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda[:N] or mps, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.model == TOY_MODEL:
            if self.toy_world is None:
                raise ValueError("model 'toy' needs a toy_world section")
            too_deep = [layer for layer in self.layers if layer >= self.toy_world.n_layer]
            if too_deep:
                raise ValueError(f"layers {too_deep} do not exist in the {self.toy_world.n_layer}-layer toy model")
        if is_packaged_model(self.model):
            n_layers = packaged_model(self.model).n_layers
            too_deep = [layer for layer in self.layers if layer >= n_layers]
            if too_deep:
                raise ValueError(f"layers {too_deep} do not exist in {self.model!r}, which has {n_layers} layers (0..{n_layers - 1})")
        self._check_training_budgets()
        self._check_layer_and_audit_selection()
        if self.original_sae.release == "from_registry":
            releases = sae_registry()["releases"].get(self.model)
            if releases is None:
                raise ValueError(f"no SAE releases registered for model {self.model!r}; give original_sae.release or local_folders")
            missing = [h for h in self.hook_types if h not in releases]
            if missing:
                raise ValueError(f"no SAE release registered for hook types {missing} of {self.model!r}")
        elif self.original_sae.release is not None and self.original_sae.sae_id_template is None:
            raise ValueError("original_sae.release needs sae_id_template (e.g. 'blocks.{layer}.hook_resid_post')")
        if self.original_sae.local_folders is not None:
            missing = [h for h in self.hook_names() if h not in self.original_sae.local_folders]
            if missing:
                raise ValueError(f"original_sae.local_folders has no folder for hooks {missing}")
        return self

    def _check_layer_and_audit_selection(self) -> None:
        """``layer_seeds`` and the audit's ``layers`` / ``seeds`` name only what this run builds (before any work)."""
        run_seeds = self.run_seeds()
        if self.layer_seeds is not None:
            strangers = [layer for layer in self.layer_seeds if layer not in self.layers]
            if strangers:
                raise ValueError(f"layer_seeds names layers {strangers} that this run does not have (layers: {self.layers}); "
                                 "drop them from layer_seeds or add them to layers")
            for layer, seeds in self.layer_seeds.items():
                missing = [s for s in seeds if s not in run_seeds]
                if missing:
                    raise ValueError(f"layer_seeds[{layer}] names seeds {missing} that are not run seeds (seeds: {run_seeds}); "
                                     "a layer runs a subset of seeds")
        audit = self.feature_audit
        if audit.layers is not None:
            strangers = [layer for layer in audit.layers if layer not in self.layers]
            if strangers:
                raise ValueError(f"feature_audit.layers names layers {strangers} that this run does not have (layers: {self.layers})")
        if audit.seeds is not None:
            for layer in audit.layers if audit.layers is not None else self.layers:
                missing = [s for s in audit.seeds if s not in self.seeds_at(layer)]
                if missing:
                    raise ValueError(f"feature_audit.seeds names seeds {missing} that layer {layer} does not run "
                                     f"(its seeds: {self.seeds_at(layer)})")

    def _check_training_budgets(self) -> None:
        """Each trained SAE's budget fits its cache and makes at least one batch (before any work)."""
        sections = [("retrained_sae", self.retrained_sae)] if self.retrained_sae.enabled else []
        if self.original_sae.train is not None:
            sections.insert(0, ("original_sae.train", self.original_sae.train))
        cached = self.activations.n_tokens
        for name, train in sections:
            if train.epochs > 1 and train.train_tokens > cached:
                raise ValueError(f"{name}: epochs={train.epochs} passes of train_tokens={train.train_tokens} need that many "
                                 f"cached tokens per epoch, but activations.n_tokens={cached}; lower train_tokens to at most "
                                 f"{cached} or cache more tokens")
            if train.train_tokens * train.epochs < train.batch_size:
                raise ValueError(f"{name}: train_tokens x epochs = {train.train_tokens * train.epochs} is less than one batch "
                                 f"(batch_size={train.batch_size})")

    @field_validator("metric_overrides")
    @classmethod
    def _metric_overrides(cls, values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = [name for name in values if name not in KNOWN_METRICS]
        if unknown:
            raise ValueError(f"metric_overrides names unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")
        return values

    # ------------------------------------------------------------ derived views
    def variant_settings(self, spec: VariantSpec) -> dict[str, Any]:
        """What building ``spec`` reads from this config (and so what its stored SAE is keyed on): the retrain
        budget and trainer settings for a training fix, a token cap for the others, the ``repair:`` options the
        method's registry entry names."""
        entry = VARIANT_METHODS[spec.method]
        settings: dict[str, Any] = {}
        if entry.trains:
            settings["train"] = self.retrained_sae.model_dump(exclude={"enabled"})
        elif spec.method == "prune":
            settings["n_tokens"] = self.pruned_sae.calibration_tokens
        elif entry.needs_compressed_activations or entry.needs_dense_activations:
            settings["n_tokens"] = self.repair.n_tokens or self.pruned_sae.calibration_tokens
        options = self.repair.model_dump()
        settings["options"] = {name: options[name] for name in entry.options}
        return settings

    def needs_dense_variant_activations(self) -> bool:
        """Whether some variant reads the dense model's activations on the compressed training tokens."""
        return any(VARIANT_METHODS[v.method].needs_dense_activations or VARIANT_METHODS[v.method].uses_dense_activations
                   for v in self.variants)

    def metric_settings(self, metric: str) -> dict[str, Any]:
        """The metric's full settings: the profile's defaults (toy, real or hub) plus this config's overrides."""
        from sae_core.metrics.registry import settings_for

        return settings_for(metric, self.metric_profile, self.metric_overrides.get(metric))

    def hook_names(self) -> list[str]:
        templates = sae_registry()["hook_types"]
        return [templates[t].format(layer=layer) for layer in self.layers for t in self.hook_types]

    def layer_of(self, hook_name: str) -> int:
        for template in sae_registry()["hook_types"].values():
            for layer in self.layers:
                if template.format(layer=layer) == hook_name:
                    return layer
        raise ValueError(f"hook {hook_name!r} is not part of this experiment")

    def hook_type_of(self, hook_name: str) -> str:
        for hook_type, template in sae_registry()["hook_types"].items():
            for layer in self.layers:
                if template.format(layer=layer) == hook_name:
                    return hook_type
        raise ValueError(f"hook {hook_name!r} is not part of this experiment")

    def original_sae_source(self, hook_name: str) -> dict[str, str] | None:
        """{'release', 'sae_id'} or {'folder'}; None when the original SAE is trained here."""
        sae = self.original_sae
        if sae.train is not None:
            return None
        if sae.local_folders is not None:
            return {"folder": sae.local_folders[hook_name]}
        layer = int(hook_name.split(".")[1])
        if sae.release == "from_registry":
            entry = sae_registry()["releases"][self.model][self.hook_type_of(hook_name)]
            return {"release": entry["release"], "sae_id": entry["sae_id"].format(layer=layer)}
        return {"release": sae.release, "sae_id": sae.sae_id_template.format(layer=layer)}


@lru_cache(maxsize=1)
def sae_registry() -> dict[str, Any]:
    return yaml.safe_load((PRESET_DIR / "sae_releases.yaml").read_text())


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "sae_releases")


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's data. ``extends: OTHER`` takes OTHER's data and merges this preset's keys on top (nested),
    so that a study preset follows its base preset's SAE settings when they change."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; known: {preset_names()}")
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
    base = data.pop("extends", None)
    if base is None:
        return data
    if base in (*_seen, name):
        raise ValueError(f"preset {name!r} extends {base!r}, which extends it back: {' -> '.join((*_seen, name, base))}")
    return _deep_merge(load_preset(base, (*_seen, name)), data)


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(preset: str = "toy", overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """A preset plus nested overrides (e.g. ``{"pruned_sae": {"sparsities": [0.25]}}``), validated."""
    from pydantic import ValidationError

    overrides = overrides or {}
    if isinstance(overrides.get("llm_pruning"), dict):  # deprecated: mapped before merging, so that it overrides the preset
        overrides = _legacy_llm_pruning(overrides)
    try:
        return ExperimentConfig.model_validate(_deep_merge(load_preset(preset), overrides))
    except ValidationError as err:
        raise ValueError(readable_validation_error(err, f"preset {preset!r} with its overrides")) from None


def readable_validation_error(err, what: str) -> str:
    """Pydantic's errors as a person reads them: field, value and rule, one line each (no links)."""
    lines = [f"invalid configuration ({what}): {err.error_count()} problem(s)"]
    for e in err.errors(include_url=False):
        field = ".".join(str(part) for part in e["loc"]) or "(the whole config)"
        rule = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            rule = "not a known field (check its spelling and nesting: python -m flows.full --print-config)"
        lines.append(f"  field: {field}")
        if e["loc"]:  # a whole-config rule names its values in its message
            lines.append(f"  value: {e.get('input')!r:.200}")
        lines.append(f"  rule:  {rule}")
    return "\n".join(lines)
