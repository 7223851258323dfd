"""Shared pieces of the SAEBench metric adapters: the result type, the inputs object and the
plumbing every adapter uses to hand an SAE object and a model object to SAEBench's own evaluation
functions.

Nothing here computes a metric; all metric code is SAEBench's (``sae_bench`` package). What lives
here is plumbing:

* :class:`MetricFamily` -- the one shape of a metric family: its ``name``, settings class, toy and
  hub defaults (plus the "real" profile's size overrides, given at registration), and
  ``run(inputs, settings)``. A family module states only what differs -- its SAEBench calls and its
  headline numbers; the plumbing every family shares is methods of the base class:
  :meth:`~MetricFamily.evaluate` (settings defaulted, timing, ``seconds`` stamped on the result),
  :meth:`~MetricFamily.saebench` (the SAEBench context with the eval's seed and grad mode, yielding
  the prepared SAE copy), :meth:`~MetricFamily.llm_dtype`, :meth:`~MetricFamily.llm_batch_size`,
  :meth:`~MetricFamily.model_cache_dir` (caches keyed on the model's fingerprint),
  :meth:`~MetricFamily.eval_output_raw` (SAEBench's ``*EvalOutput`` with the run's provenance, made
  JSON-able) and :meth:`~MetricFamily.result` / :meth:`~MetricFamily.skipped`. The registry
  (:mod:`sae_core.metrics.registry`) is a list of family objects.
* :class:`MetricInputs` -- what a family runs on: the SAE, both model objects, the tokenizer and
  where it may write (``artifacts_dir``, ``device``, ``scratch_dir``), built once by
  :func:`~sae_core.metrics.registry.run_metric`. Why one object rather than the eight positional
  parameters every ``run`` used to repeat: the families differ in which of these they read (RAVEL the
  HF model, the others the ``HookedTransformer``; core the scratch folder, ...), not in what they are
  given, so one frozen value with the derived names (``model_name``) keeps ``run(inputs, settings)``
  the one short signature, and a new input reaches every family without touching each signature.
* :class:`MetricResult` -- what every ``MetricFamily.run`` returns: SAEBench's own JSON-able output
  (``raw``), a short list of headline numbers, and ``status``/``reason`` ("ok" or "skipped").
* :func:`prepare_sae` -- a private copy of the caller's SAE, standardised the way SAEBench's own
  ``run_eval`` does for custom SAE objects (``general_utils.load_and_format_sae``), moved to the
  device and dtype the model uses. SAEBench mutates ``sae.cfg``; the copy keeps the caller's SAE
  untouched.
* :func:`model_fingerprint` / :func:`cache_dir` -- SAEBench caches LLM-side artefacts (activations,
  LLM probes, RAVEL's model-filtered prompt set) by file names that contain only the dataset or the
  model *name*. A pruned model has the same name as its dense parent, so the adapters put those
  caches in folders keyed on a hash of the weights + settings + hook: SAE variants evaluated on the
  same model share the cache, a different (e.g. pruned) model never reads a stale one. Sparse
  probing, SCR/TPP, absorption and RAVEL use :meth:`~MetricFamily.llm_cache`
  (:mod:`sae_core.metrics.safe_cache`: safetensors / JSON only, checked, kept across runs under
  ``llm_cache_dir``); the other families' caches stay under the run's ``artifacts_dir``.
* :func:`sae_bench_context` -- SAEBench reseeds ``random``/``torch`` and flips
  ``torch.set_grad_enabled`` globally; adapters restore all of that on exit. It also switches off
  jaxtyping's *runtime shape checks* while SAEBench runs: SAEBench 0.6.0 annotates
  ``train_probe_on_activations`` (``@jaxtyped``) and the ``@beartype``-only helpers it calls with the
  same dimension names for different sizes (per-class vs. positive+negative sample counts, d_model
  vs. k), and with the installed jaxtyping (0.3.x) the inner checks inherit the outer shape memo,
  so sparse probing / SCR / TPP fail with ``BeartypeCallHintParamViolation`` on any input. The checks
  are assertions only; turning them off changes no computation.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import functools
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from sae_core.lazy_torch import no_grad

if TYPE_CHECKING:  # torch loads when a metric runs, not when settings are read
    import torch

Status = Literal["ok", "skipped"]
#: "toy": tiny CPU settings for the offline toy world; "real": SAEBench's settings with CPU-sized
#: sizes on the real-language stand-ins; "hub": SAEBench's own defaults on its hub datasets.
PROFILES: tuple[str, ...] = ("toy", "real", "hub")


class MetricSettings(BaseModel):
    """Base class of every metric's settings: frozen, no unknown fields, JSON-dumpable."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricResult(BaseModel):
    """Outcome of one metric family for one (SAE, model) pair.

    ``raw``: SAEBench's own output for the run, JSON-able (the dict its ``*EvalOutput`` object
    serialises to, or for a skipped run whatever diagnostics were available).
    ``headline``: ``[{"metric_name": str, "value": float, "higher_is_better": bool | None}, ...]``;
    ``higher_is_better`` is ``None`` for descriptive numbers (L0, L1, ...). ``value`` may be NaN only
    if SAEBench itself produced NaN.
    ``status``: "ok", or "skipped" with ``reason`` saying why (never silently).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    status: Status
    reason: str | None = None
    raw: dict[str, Any]
    headline: list[dict[str, Any]]
    seconds: float | None = None

    @field_validator("headline")
    @classmethod
    def _check_headline(cls, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        checked = []
        for row in rows:
            if set(row) != {"metric_name", "value", "higher_is_better"}:
                raise ValueError(f"headline rows need metric_name/value/higher_is_better, got {sorted(row)}")
            if row["higher_is_better"] not in (True, False, None):
                raise ValueError(f"higher_is_better must be bool or None, got {row['higher_is_better']!r}")
            checked.append({"metric_name": str(row["metric_name"]), "value": float(row["value"]),
                            "higher_is_better": row["higher_is_better"]})
        return checked

    @classmethod
    def skipped(cls, metric: str, reason: str, raw: dict[str, Any] | None = None, seconds: float | None = None) -> "MetricResult":
        return cls(metric=metric, status="skipped", reason=reason, raw=raw or {}, headline=[], seconds=seconds)

    def headline_dict(self) -> dict[str, float]:
        return {row["metric_name"]: row["value"] for row in self.headline}


@dataclass(frozen=True)
class MetricInputs:
    """What one family runs on (built once by :func:`~sae_core.metrics.registry.run_metric`).

    ``sae``: any ``sae_lens.SAE`` whose ``cfg.metadata.hook_name`` is a TransformerLens hook of
    ``hooked_model``; it is copied, never modified. ``hooked_model``: ``HookedTransformer``;
    ``hf_model``: ``transformers.PreTrainedModel`` with the same weights; ``tokenizer``: the HF
    tokenizer (families read what ``model_kind`` says; models must already be on ``device``).
    ``artifacts_dir``: where SAEBench may cache LLM-side artefacts for this run; ``llm_cache_dir``: where
    the safe LLM-side caches (:mod:`sae_core.metrics.safe_cache`) persist across runs (None: under
    ``artifacts_dir``); ``scratch_dir``: throw-away outputs.
    """

    sae: Any
    hooked_model: Any
    hf_model: Any
    tokenizer: Any
    artifacts_dir: str | Path = "artifacts"
    device: str = "cpu"
    scratch_dir: str | Path | None = None
    llm_cache_dir: str | Path | None = None

    @property
    def model_name(self) -> str:
        """The model's label for SAEBench: the ``HookedTransformer``'s name, else the HF model's (last path part)."""
        if self.hooked_model is not None or self.hf_model is None:
            return hooked_model_name(self.hooked_model)
        return str(getattr(self.hf_model.config, "_name_or_path", "") or "model").rstrip("/").split("/")[-1]


@dataclass(frozen=True)
class Reliability:
    """What is known about how far a family's figures can be trusted: data given to the family at
    registration (``registry.RELIABILITY``), shown beside its figures in reports by
    :func:`sae_core.metrics.registry.render_reliability`.

    ``mark``: a few words put beside the family's columns ("low reliability"); ``{sae_bench}`` in it
    becomes the installed SAEBench version. ``finding``: one sentence, what was found. ``source``:
    the citation ("" when the finding is SAEBench's own history).
    """

    mark: str
    finding: str
    source: str = ""

    def rendered_mark(self) -> str:
        return self.mark.replace("{sae_bench}", sae_bench_version())


class MetricFamily(abc.ABC):
    """One SAEBench metric family. A subclass states only what differs from the other families:

    ``name`` (the metric's name in configs, storage keys and reports), ``settings_cls`` with its
    ``toy_defaults`` and ``hub_defaults``, ``model_kind`` (which model object SAEBench's code runs on:
    "hooked" -- the ``HookedTransformer``, or "hf" -- the ``transformers`` model), ``needs_pad_token``
    (SAEBench's probing evals pad and mask: checked before :meth:`run`), and :meth:`run`,
    the adapter around SAEBench's own evaluation, which also picks the headline numbers and their
    ``higher_is_better``. The "real" profile is ``hub_defaults`` with ``real_overrides`` (sizes
    only), given when the family is registered. Everything else is here, shared.
    """

    name: ClassVar[str]
    settings_cls: ClassVar[type[MetricSettings]]
    toy_defaults: ClassVar[MetricSettings]
    hub_defaults: ClassVar[MetricSettings]
    model_kind: ClassVar[str] = "hooked"
    needs_pad_token: ClassVar[bool] = False
    #: the last :meth:`llm_cache` opened (tests and benchmarks read its ``status``)
    last_llm_cache: Any = None

    def __init__(self, real_overrides: Mapping[str, Any] | None = None, reliability: Reliability | None = None) -> None:
        self.real_overrides: dict[str, Any] | None = dict(real_overrides) if real_overrides else None
        #: what is known about how far this family's figures can be trusted (``registry.RELIABILITY``).
        self.reliability: Reliability | None = reliability

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def defaults(self, profile: str) -> MetricSettings:
        """The settings of ``profile`` ("toy" | "real" | "hub")."""
        if profile == "toy":
            return self.toy_defaults
        if profile == "hub":
            return self.hub_defaults
        if profile == "real":
            return self.settings_cls(**{**self.hub_defaults.model_dump(), **(self.real_overrides or {})})
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")

    def settings(self, profile: str = "hub", **overrides: Any) -> MetricSettings:
        """Profile defaults with ``overrides`` applied (validated)."""
        base = self.defaults(profile).model_dump()
        base.update(overrides)
        return self.settings_cls(**base)

    def resolve_settings(self, settings: MetricSettings | dict[str, Any] | None, profile: str = "hub") -> MetricSettings:
        """``None`` -> ``profile``'s defaults; a dict -> full settings or overrides of them; a settings object as is."""
        if settings is None:
            return self.defaults(profile)
        if isinstance(settings, dict):
            return self.settings(profile, **settings)
        if isinstance(settings, self.settings_cls):
            return settings
        raise TypeError(f"settings for {self.name!r} must be {self.settings_cls.__name__}, a dict or None, "
                        f"got {type(settings).__name__}")

    # -- what a family states -------------------------------------------------------------------

    @abc.abstractmethod
    def run(self, inputs: MetricInputs, config: MetricSettings) -> MetricResult:
        """Run SAEBench's evaluation of this family on ``inputs`` with ``config`` (this family's
        settings object) and return :meth:`result` or :meth:`skipped`; :meth:`evaluate` times it.

        Datasets are whatever :func:`~sae_core.datasets.mirror.dataset_overrides` serves at the time
        (:func:`~sae_core.metrics.registry.run_metric` sets them up per profile).
        """

    # -- the plumbing every family shares -------------------------------------------------------

    def evaluate(self, inputs: MetricInputs, settings: MetricSettings | dict[str, Any] | None = None) -> MetricResult:
        """:meth:`run` with ``settings`` resolved (``None``: ``hub_defaults``), timed: the result's ``seconds``."""
        config = self.resolve_settings(settings)
        timer = Timer()
        if self.needs_pad_token:
            require_tokenizer_specials(inputs.hooked_model.tokenizer)
        result = self.run(inputs, config)
        return result.model_copy(update={"seconds": timer.seconds})

    def model(self, inputs: MetricInputs) -> Any:
        """The model object SAEBench's code of this family runs on (``model_kind``)."""
        return inputs.hf_model if self.model_kind == "hf" else inputs.hooked_model

    def llm_dtype(self, inputs: MetricInputs, settings: MetricSettings) -> str:
        """``settings.llm_dtype``, or (``None``) the dtype :meth:`model`'s weights are in."""
        return resolve_llm_dtype(settings.llm_dtype, self.model(inputs))

    @staticmethod
    def llm_batch_size(inputs: MetricInputs, setting: int | None) -> int:
        """``setting``, or (``None``) SAEBench's ``LLM_NAME_TO_BATCH_SIZE`` for the model (32 if unknown)."""
        return setting or default_llm_batch_size(inputs.model_name)

    @contextlib.contextmanager
    def saebench(self, inputs: MetricInputs, dtype: str, *, seed: int | None = None, grad: bool | None = None,
                 reseed: bool = False, context_size: int | None = None) -> Iterator[Any]:
        """The block SAEBench runs in; yields the prepared SAE copy (:func:`prepare_sae`).

        :func:`sae_bench_context` with ``seed`` (global state restored, jaxtyping checks off, SAEBench's
        draws from ``random`` private); then ``grad=False`` -> ``torch.no_grad()``, ``grad=True`` ->
        ``torch.set_grad_enabled(True)``; given ``seed``, the process-wide torch and numpy generators are
        seeded with it (``torch.manual_seed(seed)``, ``numpy.random.seed(seed)``, restored on exit), as
        SAEBench's own ``run_eval`` seeds torch before its loop over SAEs: sparse probing's and SCR/TPP's
        ``torch.randperm`` sample selection, absorption's and RAVEL's ``DataLoader(shuffle=True)`` and
        scikit-learn estimators built without ``random_state`` then draw the same numbers whatever ran
        before in the process (without it, two evaluations of the same SAE in one run could differ:
        docs/reproducibility.md); ``reseed`` -> also ``random.seed(seed)`` (as SAEBench's
        ``run_eval`` of absorption does); then the SAE is copied to ``inputs.device`` / ``dtype``
        (``context_size`` filled in where it lacks one).
        """
        import numpy as np
        import torch

        with sae_bench_context(seed), (torch.no_grad() if grad is False else contextlib.nullcontext()):
            if grad is True:
                torch.set_grad_enabled(True)
            if seed is not None:
                torch.manual_seed(seed)
                np.random.seed(seed)
            if reseed:
                random.seed(seed)
            yield prepare_sae(inputs.sae, model_name=inputs.model_name, device=inputs.device, dtype=dtype,
                              context_size=context_size)

    def cache_dir(self, inputs: MetricInputs, *key_parts: Any) -> Path:
        """:func:`cache_dir` of this family: ``artifacts_dir/<name>/<hash(key_parts)>``, created."""
        return cache_dir(inputs.artifacts_dir, self.name, *key_parts)

    def model_cache_dir(self, inputs: MetricInputs, *key_parts: Any) -> Path:
        """:meth:`cache_dir` keyed first on :func:`model_fingerprint` of :meth:`model` (a pruned model
        shares its parent's name, never its caches)."""
        return self.cache_dir(inputs, model_fingerprint(self.model(inputs)), *key_parts)

    def llm_cache(self, inputs: MetricInputs, *key_parts: Any, modules: tuple[str, ...] = (),
                  datasets: tuple[str, ...] = ()) -> Any:
        """The :class:`~sae_core.metrics.safe_cache.LlmCache` of this family for :meth:`model` and
        ``key_parts`` (plus the tokenizer, device, the served ``datasets``' content and the library
        versions), under ``inputs.llm_cache_dir`` (else ``artifacts_dir``)``/<name>/<hash>/``: ``with`` it
        to get the folder to hand SAEBench, with ``modules``' pickle / torch.save made safe. The last
        one opened is ``self.last_llm_cache`` (its ``status``: "warm", "cold", "recomputed")."""
        from sae_core.metrics import safe_cache

        model = self.model(inputs)
        tokenizer = getattr(model, "tokenizer", None) or inputs.tokenizer
        key = safe_cache.llm_cache_key(family=self.name, model_fingerprint=model_fingerprint(model), tokenizer=tokenizer,
                                       device=inputs.device, parts=[_key(p) for p in key_parts], datasets=datasets)
        root = Path(inputs.llm_cache_dir if inputs.llm_cache_dir is not None else inputs.artifacts_dir)
        self.last_llm_cache = safe_cache.LlmCache(root / self.name / safe_cache.key_hash(key), key, modules)
        return self.last_llm_cache

    @staticmethod
    def eval_output_raw(output_cls: type, sae: Any, **fields: Any) -> dict[str, Any]:
        """SAEBench's ``output_cls(**fields)`` (an ``*EvalOutput``) with the run's provenance
        (:func:`eval_output_provenance` of the prepared ``sae``), as JSON-able ``raw``."""
        return to_jsonable(asdict(output_cls(**fields, **eval_output_provenance(sae))))

    def result(self, raw: dict[str, Any], rows: list[dict[str, Any]]) -> MetricResult:
        """The family's "ok" result: SAEBench's ``raw`` output and the headline ``rows`` (``seconds``: :meth:`evaluate`)."""
        return MetricResult(metric=self.name, status="ok", raw=raw, headline=rows)

    def skipped(self, reason: str, raw: dict[str, Any] | None = None, *, eval_config: Any = None) -> MetricResult:
        """The family's "skipped" result, with the reason (never silently); ``eval_config`` (SAEBench's
        config object) goes first into ``raw``."""
        if eval_config is not None:
            raw = {"eval_config": to_jsonable(asdict(eval_config)), **(raw or {})}
        return MetricResult.skipped(self.name, reason, raw=raw)


def headline(metric_name: str, value: Any, higher_is_better: bool | None) -> dict[str, Any]:
    return {"metric_name": metric_name, "value": _to_float(value), "higher_is_better": higher_is_better}


def _to_float(value: Any) -> float:
    import torch

    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value)


def to_jsonable(obj: Any) -> Any:
    """SAEBench output objects -> plain JSON types (the same ``default=str`` SAEBench's ``to_json`` uses)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(value: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def sae_bench_version() -> str:
    """Installed SAEBench version (``sae-bench`` distribution), e.g. ``"0.6.0"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-bench")
    except PackageNotFoundError:  # pragma: no cover - it is a hard dependency
        return "unknown"


def eval_output_provenance(sae: Any) -> dict[str, Any]:
    """The fields every SAEBench ``*EvalOutput`` records about the run and the SAE (an SAE of ours,
    not a sae-lens release: ``custom_sae`` / ``custom``, as SAEBench names custom SAEs)."""
    from datetime import datetime

    from sae_bench.sae_bench_utils import get_eval_uuid

    return dict(
        eval_id=get_eval_uuid(),
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        sae_bench_commit_hash=f"sae-bench=={sae_bench_version()}",
        sae_lens_id="custom_sae",
        sae_lens_release_id="custom",
        sae_lens_version=sae_lens_version(),
        sae_cfg_dict=sae.cfg.to_dict(),
    )


def sae_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    import torch

    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def resolve_llm_dtype(setting: str | None, model: torch.nn.Module) -> str:
    """``None`` -> the dtype the model's weights are in (SAEBench wants it as a string)."""
    return setting or dtype_name(module_dtype(model))


def prepare_sae(sae: Any, *, model_name: str, device: str, dtype: torch.dtype | str, context_size: int | None = None):
    """A standardised private copy of ``sae`` on ``device``/``dtype``, ready for SAEBench.

    Fills the metadata SAEBench requires when the SAE object doesn't carry it (``model_name``,
    ``prepend_bos`` (default True), ``context_size``); the hook layer is parsed from
    ``metadata.hook_name`` by SAEBench. Works for any ``sae_lens.SAE`` subclass (standard/ReLU,
    TopK, JumpReLU, gated, ...).
    """
    import sae_bench.sae_bench_utils.general_utils as general_utils

    sae = copy.deepcopy(sae)
    metadata = sae.cfg.metadata
    if not getattr(metadata, "hook_name", None):
        raise ValueError("the SAE has no cfg.metadata.hook_name; SAEBench needs the TransformerLens hook it reads")
    if not getattr(metadata, "model_name", None):
        metadata.model_name = model_name
    if getattr(metadata, "prepend_bos", None) is None:
        metadata.prepend_bos = True
    if context_size is not None and getattr(metadata, "context_size", None) is None:
        metadata.context_size = context_size
    _, sae, _ = general_utils.load_and_format_sae("custom", sae, device)
    if isinstance(dtype, str):
        dtype = general_utils.str_to_dtype(dtype)
    sae = sae.to(device=device, dtype=dtype)
    sae.eval()
    return sae


@no_grad
def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of a model's weights (names, shapes, dtypes, norms, non-zero counts).

    Cheap (one reduction per tensor) and sensitive to pruning: a WANDA-pruned copy differs in
    every pruned matrix's norm and non-zero count.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        if tensor.is_floating_point():
            norm = torch.linalg.vector_norm(tensor, dtype=torch.float32).item()
            digest.update(f"|{norm:.6e}|{torch.count_nonzero(tensor).item()}".encode())
        elif tensor.numel():
            digest.update(f"|{int(tensor.sum().item())}".encode())
    return digest.hexdigest()[:16]


def cache_dir(artifacts_dir: str | Path, metric: str, *key_parts: Any) -> Path:
    """``artifacts_dir/<metric>/<hash(key_parts)>``, created."""
    digest = hashlib.sha256(json.dumps([_key(p) for p in key_parts], sort_keys=True, default=str).encode())
    path = Path(artifacts_dir) / metric / digest.hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(part: Any) -> Any:
    if isinstance(part, BaseModel):
        return part.model_dump(mode="json")
    return part


@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore torch grad mode and the python / numpy / torch RNG states after SAEBench ran."""
    import numpy as np
    import torch

    grad_enabled = torch.is_grad_enabled()
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_grad_enabled(grad_enabled)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


_JAXTYPING_LOCK = threading.Lock()
_JAXTYPING_DEPTH = 0
_JAXTYPING_PREVIOUS: bool | None = None


@contextlib.contextmanager
def jaxtyping_checks_disabled() -> Iterator[None]:
    """Turn jaxtyping runtime checks off (re-entrant, thread-safe); previous setting restored at the end."""
    global _JAXTYPING_DEPTH, _JAXTYPING_PREVIOUS
    import jaxtyping

    with _JAXTYPING_LOCK:
        if _JAXTYPING_DEPTH == 0:
            _JAXTYPING_PREVIOUS = bool(jaxtyping.config.jaxtyping_disable)
            jaxtyping.config.update("jaxtyping_disable", True)
        _JAXTYPING_DEPTH += 1
    try:
        yield
    finally:
        with _JAXTYPING_LOCK:
            _JAXTYPING_DEPTH -= 1
            if _JAXTYPING_DEPTH == 0:
                jaxtyping.config.update("jaxtyping_disable", bool(_JAXTYPING_PREVIOUS))


@contextlib.contextmanager
def private_random(seed: int) -> Iterator[random.Random]:
    """Give every loaded SAEBench module one private ``random.Random(seed)`` in place of the
    process-wide ``random`` module, for the duration.

    SAEBench seeds and draws from the global generator (absorption's vocabulary split and in-context
    examples, RAVEL's pairs, the sparse-probing datasets). In a Prefect worker other threads draw
    from it too (heartbeat and event-delivery jitter), so the same seeded eval could see different
    draws: two cold runs of the gemma-3-270m preset trained absorption's first-letter probes on
    different examples and passed 20, then 19 letters. With one private generator seeded as the eval
    seeds the global one, the draws are the ones an undisturbed single-threaded run makes. Metric
    tasks run one at a time (``tasks.common.compute_lock``), so swapping module attributes is safe.
    """
    import sys

    rng = random.Random(seed)
    patched = [module for name, module in list(sys.modules.items())
               if name.split(".")[0] == "sae_bench" and getattr(module, "random", None) is random]
    for module in patched:
        module.random = rng
    try:
        yield rng
    finally:
        for module in patched:
            module.random = random


def reseed_everything(seed: int) -> None:
    """Seed torch's and numpy's process-wide generators and the private ``random.Random`` that
    :func:`private_random` gave SAEBench's modules (when one is active) with ``seed``."""
    import sys

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    for name, module in list(sys.modules.items()):
        rng = getattr(module, "random", None) if name.split(".")[0] == "sae_bench" else None
        if isinstance(rng, random.Random):
            rng.seed(seed)
            break  # one generator shared by every module (private_random)


@contextlib.contextmanager
def reseeded_calls(seed: int, *targets: tuple[Any, str]) -> Iterator[None]:
    """While open, every call of ``module.name`` (each of ``targets``) first runs
    :func:`reseed_everything` (``seed``): the draws of the SAE-dependent part of an evaluation start
    from the same state whether SAEBench computed its LLM-side artefacts (activations, LLM probes,
    filtered prompts, drawing as it goes) or loaded them from its cache.

    Why: SAEBench seeds once, then computes-and-caches the LLM side for the first SAE on a model and
    loads it for the next. The draws that the LLM side consumed are then missing from the stream, so
    the first SAE evaluated on a model drew other probe batches than the second, and which variant ran
    first was decided by thread scheduling (measured on the toy world: sparse probing's top-k
    accuracies up to 0.026 apart, TPP up to 0.018; docs/reproducibility.md). The wrapper only
    reseeds: every computation is SAEBench's. Metric tasks run one at a time
    (``tasks.common.compute_lock``), so swapping module attributes is safe."""
    originals = [(module, name, getattr(module, name)) for module, name in targets]

    def wrap(function):
        @functools.wraps(function)
        def reseeded(*args, **kwargs):
            reseed_everything(seed)
            return function(*args, **kwargs)

        return reseeded

    with swapped_attributes([(module, name, wrap(function)) for module, name, function in originals]):
        yield


@contextlib.contextmanager
def swapped_attributes(replacements: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """While open, each ``(owner, name, value)`` is set as ``owner.name``; the old values come back on exit.
    The one way the adapters hook into SAEBench's module globals (reseeding, the encode memo, the safe caches):
    metric tasks run one at a time (``tasks.common.compute_lock``), so swapping them is safe."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
    for owner, name, value in replacements:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


@contextlib.contextmanager
def sae_bench_context(seed: int | None = None) -> Iterator[None]:
    """What every adapter wraps SAEBench calls in: global state restored, jaxtyping checks off and,
    given the eval's ``seed``, SAEBench's draws from ``random`` made private (:func:`private_random`)."""
    with preserved_global_state(), jaxtyping_checks_disabled(), \
            (private_random(seed) if seed is not None else contextlib.nullcontext()):
        yield


class Timer:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def default_llm_batch_size(model_name: str, fallback: int = 32) -> int:
    """SAEBench's ``LLM_NAME_TO_BATCH_SIZE`` for ``model_name``, else ``fallback``."""
    import sae_bench.sae_bench_utils.activation_collection as activation_collection

    return activation_collection.LLM_NAME_TO_BATCH_SIZE.get(model_name, fallback)


def hooked_model_name(hooked_model: Any) -> str:
    name = getattr(getattr(hooked_model, "cfg", None), "model_name", None)
    return str(name) if name else "model"


def require_tokenizer_specials(tokenizer: Any, *, need_pad: bool = True) -> None:
    """SAEBench pads with ``pad_token_id`` and masks BOS/PAD/EOS; fail early with a clear message."""
    missing = [name for name in (("pad_token_id",) if need_pad else ()) if getattr(tokenizer, name, None) is None]
    if missing:
        raise ValueError(
            f"tokenizer lacks {missing}: SAEBench's probing evals pad to max_length and mask pad/bos/eos tokens; "
            "set tokenizer.pad_token (e.g. to the eos token) before evaluating"
        )
