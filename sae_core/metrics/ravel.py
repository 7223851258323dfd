"""SAEBench *RAVEL* (cause / isolation / disentanglement of entity attributes) on a given Hugging
Face model, via ``sae_bench.evals.ravel.main.run_eval_single_sae(config, sae, model, device,
artifacts_folder)`` -- RAVEL is SAEBench's one eval that runs on the ``transformers``
``PreTrainedModel`` rather than a ``HookedTransformer``.

Adaptations at SAEBench's model boundary (active only during the call, see
:func:`ravel_model_compat`; all small, all tested):

* tokenizer: SAEBench re-loads the tokenizer with ``AutoTokenizer.from_pretrained(config.model_name)``
  in ``ravel.main``; the adapter makes that name resolve to the ``tokenizer`` object passed in, so
  ``config.model_name`` is just a label (no hub / disk lookup).
* decoder layers: ``activation_collection.get_module`` only knows Gemma-2 and GPT-NeoX; the
  adapter resolves the layer list for any common causal-LM layout (``model.layers``,
  ``transformer.h`` (GPT-2), ``gpt_neox.layers``, ``model.decoder.layers``).
* layer outputs: SAEBench's RAVEL hooks expect a decoder layer to return a tuple
  ``(hidden_states, ...)`` (transformers 4). Decoder layers of transformers 5 return the hidden-state
  tensor itself, which makes SAEBench's ``get_layer_activations`` index the batch dimension and its
  intervention hook raise "Unexpected output shape". The layer handed to SAEBench presents its
  output to those hooks as a 1-tuple and turns their tuple result back into a tensor.
* residual view: the SAE was trained on the ``HookedTransformer``'s residual stream. If that
  model was built with ``center_writing_weights`` (TransformerLens' default processing), its
  ``hook_resid_post`` is the HF hidden state minus its per-token mean; the adapter detects this
  (one short forward pass through both models, :func:`residual_view`) and shows SAEBench's hooks
  the centred hidden states, adding the mean back afterwards (LayerNorm makes the mean invisible
  downstream). ``raw["sae_transfer_residual_view"]`` records "raw" / "centered" / "mismatch".
* the LLM's parameters are frozen (``requires_grad=False``) while SAEBench trains its binary mask,
  so no gradients accumulate on the caller's model; previous flags are restored.

The layer intervened on is the SAE's hook layer and the activation read is that decoder layer's
output, i.e. ``blocks.{L}.hook_resid_post`` -- RAVEL is meaningful for residual-stream SAEs only.

Data: RAVEL's prompt/attribute json files (``adamkarvonen/ravel_prompts`` on the hub, fetched by
``snapshot_download`` into ``<artifact_dir>/base``), served offline by
:func:`~sae_core.datasets.mirror.dataset_overrides`. SAEBench then generates the model's
completions, keeps only prompts the model answers correctly, and caches that model-specific
prompt set (JSON) in ``<llm cache>/ravel/<hash of HF weights + tokenizer + settings + hook + prompt
files + versions>/entry/`` (:mod:`sae_core.metrics.safe_cache`: checked, kept across runs).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_core.lazy_torch import no_grad
from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline, reseeded_calls

if TYPE_CHECKING:  # torch loads when a metric runs, not when settings are read
    import torch



class RavelSettings(MetricSettings):
    """Mirrors ``RAVELEvalConfig``; defaults are SAEBench's."""

    entity_attribute_selection: dict[str, list[str]] = {
        "city": ["Country", "Continent", "Language"],
        "nobel_prize_winner": ["Country of Birth", "Field", "Gender"],
    }
    top_n_entities: int = 500
    top_n_templates: int = 90
    full_dataset_downsample: int | None = None
    num_pairs_per_attribute: int = 5000
    train_test_split: float = 0.7
    force_dataset_recompute: bool = False
    #: None -> the model's own dtype.
    llm_dtype: str | None = None
    #: None -> SAEBench's choice: LLM_NAME_TO_BATCH_SIZE[model] // 4 (32 // 4 for unknown models).
    llm_batch_size: int | None = None
    learning_rate: float = 1e-3
    num_epochs: int = 2
    train_mdas: bool = False
    n_generated_tokens: int = 6
    random_seed: int = 42


TOY_DEFAULTS = RavelSettings(
    entity_attribute_selection={"city": ["Country", "Continent", "Language"]},
    top_n_entities=20,
    num_pairs_per_attribute=40,
    llm_batch_size=4,
    num_epochs=2,
    n_generated_tokens=3,
    learning_rate=1e-2,
)
HUB_DEFAULTS = RavelSettings()


_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Gemma/Qwen, GPT-2, GPT-NeoX, OPT layouts)."""
    import torch

    for path in _LAYER_PATHS:
        obj: Any = model
        try:
            for attribute in path.split("."):
                obj = getattr(obj, attribute)
        except AttributeError:
            continue
        if isinstance(obj, (torch.nn.ModuleList, list, tuple)):
            return obj
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (looked for {', '.join(_LAYER_PATHS)})")


class TupleOutputLayer:
    """A decoder layer as SAEBench's RAVEL code expects it: forward hooks see ``(hidden_states, ...)``.

    Only ``register_forward_hook`` is adapted; everything else is the wrapped module's. With
    ``center=True`` the hooks see the hidden states minus their mean over ``d_model`` (the residual
    stream of a HookedTransformer built with ``center_writing_weights``, which is what the SAE read);
    the mean is added back to whatever the hook returns, so the HF forward pass is unchanged apart
    from the hook's own edit.
    """

    def __init__(self, module: torch.nn.Module, center: bool = False):
        self.module = module
        self.center = center

    def register_forward_hook(self, hook, *args, **kwargs):
        center = self.center

        def adapted(module, inputs, outputs):
            hidden, rest, was_tuple = (outputs[0], outputs[1:], True) if isinstance(outputs, tuple) else (outputs, (), False)
            mean = hidden.mean(dim=-1, keepdim=True) if center else None
            view = hidden - mean if center else hidden
            result = hook(module, inputs, (view, *rest))
            if result is None:
                return None
            new_hidden, new_rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, rest)
            if center:
                new_hidden = new_hidden + mean
            return (new_hidden, *new_rest) if was_tuple else new_hidden

        return self.module.register_forward_hook(adapted, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def make_get_module(center: bool = False):
    """Stand-in for ``activation_collection.get_module`` (see module docstring)."""

    def get_module(model: torch.nn.Module, layer_num: int) -> TupleOutputLayer:
        return TupleOutputLayer(decoder_layers(model)[layer_num], center=center)

    return get_module


get_module = make_get_module(center=False)


@no_grad
def residual_view(hooked_model: Any, hf_model: torch.nn.Module, hook_name: str, tokenizer: Any, device: str) -> str:
    """How ``hooked_model``'s ``hook_name`` relates to ``hf_model``'s decoder-layer output:
    "raw" (equal), "centered" (equal after subtracting the mean over d_model, i.e. TransformerLens'
    ``center_writing_weights``) or "mismatch"."""
    import torch

    layer = int(hook_name.split(".")[1])
    text = "The city of Paris is in Europe. People in Tokyo speak Japanese."
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :32].to(device)
    _, cache = hooked_model.run_with_cache(ids, names_filter=[hook_name], prepend_bos=False, stop_at_layer=layer + 1)
    tl_out = cache[hook_name].float()
    captured: dict[str, torch.Tensor] = {}

    def grab(module, inputs, outputs):
        captured["out"] = outputs[0] if isinstance(outputs, tuple) else outputs

    handle = decoder_layers(hf_model)[layer].register_forward_hook(grab)
    try:
        hf_model(input_ids=ids)
    finally:
        handle.remove()
    hf_out = captured["out"].float()
    low_precision = hf_out.dtype != torch.float32 or next(hf_model.parameters()).dtype in (torch.bfloat16, torch.float16)
    tolerance = 3e-2 if low_precision else 1e-3
    scale = hf_out.abs().max().clamp_min(1e-6)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and bool(((a - b).abs().max() / scale) < tolerance)

    if close(tl_out, hf_out):
        return "raw"
    if close(tl_out, hf_out - hf_out.mean(dim=-1, keepdim=True)):
        return "centered"
    return "mismatch"


class _GivenTokenizer:
    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer


@contextlib.contextmanager
def ravel_model_compat(model: torch.nn.Module, tokenizer: Any, center: bool = False) -> Iterator[None]:
    """The model-boundary adaptations listed in the module docstring, undone on exit."""
    import sae_bench.evals.ravel.main as ravel_main
    import sae_bench.sae_bench_utils.activation_collection as activation_collection

    saved = (ravel_main.AutoTokenizer, activation_collection.get_module)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    ravel_main.AutoTokenizer = _GivenTokenizer(tokenizer)
    activation_collection.get_module = make_get_module(center)
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        ravel_main.AutoTokenizer, activation_collection.get_module = saved
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def check_filtered_datasets(eval_config: Any, hf_model: Any, tokenizer: Any, folder: Path) -> list[str]:
    """Build (or reuse) SAEBench's model-filtered RAVEL prompt sets and say what would break SAEBench.

    The files are created with the very calls SAEBench's ``run_eval_single_dataset`` makes on first
    use (``RAVELInstance.create_from_files`` -> ``create_and_save_filtered_dataset``, generation batch
    x8), at the path it looks for, so SAEBench then just loads them. A model that answers too few
    prompts would otherwise crash inside SAEBench (``max()`` of an empty sequence, "No prompts with
    different attribute label", or NaN scores from an empty validation loader).
    """
    from sae_bench.evals.ravel.instance import RAVELFilteredDataset, RAVELInstance, get_instance_name

    problems: list[str] = []
    for entity_class, attributes in eval_config.entity_attribute_selection.items():
        path = Path(folder) / get_instance_name(entity_class, eval_config.model_name,
                                                eval_config.full_dataset_downsample, eval_config.top_n_entities)
        if not path.exists():
            batch_size = eval_config.llm_batch_size
            eval_config.llm_batch_size = batch_size * 8
            try:
                instance = RAVELInstance.create_from_files(
                    config=eval_config, entity_type=entity_class, tokenizer=tokenizer, data_dir=str(folder),
                    model=hf_model, model_name=eval_config.model_name, attribute_types=attributes,
                    downsample=eval_config.full_dataset_downsample,
                )
            finally:
                eval_config.llm_batch_size = batch_size
            instance.create_and_save_filtered_dataset(artifact_dir=str(folder), top_n_entities=eval_config.top_n_entities)
        dataset = RAVELFilteredDataset.load(str(path))
        usable = {a: len(dataset.get_prompts_by_attribute(a)) for a in attributes}
        for attribute in attributes:
            prompts = dataset.get_prompts_by_attribute(attribute)
            labels = {p.attribute_label for p in prompts}
            cause = min(eval_config.num_pairs_per_attribute, len(prompts))
            iso = min(cause, sum(min(eval_config.num_pairs_per_attribute, n) for a, n in usable.items() if a != attribute))
            total = cause + iso
            validation = total - int(total * eval_config.train_test_split)
            if len(labels) < 2 or validation < eval_config.llm_batch_size:
                problems.append(f"{entity_class}/{attribute}: {len(prompts)} correctly answered prompts, "
                                f"{len(labels)} distinct values, {validation} validation pairs for batch size "
                                f"{eval_config.llm_batch_size}")
    return problems


class Ravel(MetricFamily):
    name = "ravel"
    settings_cls = RavelSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS
    model_kind = "hf"  # SAEBench's RAVEL runs on the transformers model

    def run(self, inputs: MetricInputs, config: RavelSettings) -> MetricResult:
        """RAVEL on the HF model (the ``HookedTransformer`` only supplies the model's name label and the
        residual view; may be None)."""
        import sae_bench.evals.ravel.main as ravel_main
        from sae_bench.evals.ravel.eval_config import RAVELEvalConfig
        from sae_bench.evals.ravel.eval_output import RAVELEvalOutput, RAVELMetricCategories, RAVELMetricResults

        from sae_core.datasets.standins.common import RAVEL_PROMPTS

        hooked_model, hf_model, tokenizer, device = inputs.hooked_model, inputs.hf_model, inputs.tokenizer, inputs.device
        llm_dtype = self.llm_dtype(inputs, config)
        batch_size = config.llm_batch_size or max(1, self.llm_batch_size(inputs, None) // 4)  # SAEBench: default // 4
        hook_name = str(inputs.sae.cfg.metadata.hook_name)
        if not hook_name.startswith("blocks.") or not hook_name.endswith("hook_resid_post"):
            return self.skipped(f"SAEBench's RAVEL reads and patches decoder-layer outputs (blocks.L.hook_resid_post); "
                                f"this SAE reads {hook_name!r}")
        view = "raw" if hooked_model is None else residual_view(hooked_model, hf_model, hook_name, tokenizer, device)
        if view == "mismatch":
            warnings.warn(f"RAVEL: the HookedTransformer's {hook_name} matches neither the HF decoder-layer output nor its "
                          "centred version; running on the raw HF output", stacklevel=2)
        # each attribute's MDBM training draws from the seed whether the prompt set was built or read from the cache
        with self.saebench(inputs, llm_dtype, seed=config.random_seed) as sae, \
                reseeded_calls(config.random_seed, (ravel_main, "run_eval_single_cause_attribute")), \
                ravel_model_compat(hf_model, tokenizer, center=view == "centered"), contextlib.ExitStack() as stack:
            sae.requires_grad_(False)
            # the prompt files and the model-filtered prompt set (JSON): one checked entry kept across runs (safe_cache)
            folder = stack.enter_context(self.llm_cache(
                inputs, sae.cfg.hook_name, config.model_dump(exclude={"learning_rate", "num_epochs", "train_mdas"}),
                llm_dtype, batch_size, datasets=(RAVEL_PROMPTS,)))
            eval_config = RAVELEvalConfig(
                entity_attribute_selection={k: list(v) for k, v in config.entity_attribute_selection.items()},
                top_n_entities=config.top_n_entities,
                top_n_templates=config.top_n_templates,
                full_dataset_downsample=config.full_dataset_downsample,
                num_pairs_per_attribute=config.num_pairs_per_attribute,
                train_test_split=config.train_test_split,
                force_dataset_recompute=config.force_dataset_recompute,
                model_name=inputs.model_name,
                llm_dtype=llm_dtype,
                llm_batch_size=batch_size,
                learning_rate=config.learning_rate,
                num_epochs=config.num_epochs,
                train_mdas=config.train_mdas,
                n_generated_tokens=config.n_generated_tokens,
                random_seed=config.random_seed,
                artifact_dir=str(folder),
            )
            problems = check_filtered_datasets(eval_config, hf_model, tokenizer, folder)
            if problems:
                return self.skipped(
                    "SAEBench's RAVEL cannot run on this model: " + "; ".join(problems)
                    + " (RAVEL keeps only prompts the model completes correctly; it needs >= 2 distinct attribute values "
                    "and at least one validation batch per attribute)",
                    eval_config=eval_config,
                )
            results, per_class = ravel_main.run_eval_single_sae(eval_config, sae, hf_model, device, str(folder))
            raw = self.eval_output_raw(
                RAVELEvalOutput, sae,
                eval_config=eval_config,
                eval_result_metrics=RAVELMetricCategories(
                    ravel=RAVELMetricResults(
                        disentanglement_score=results["disentangle_score"],
                        cause_score=results["cause_score"],
                        isolation_score=results["isolation_score"],
                    )
                ),
                eval_result_details=[],
                eval_result_unstructured=per_class,
            )
        raw["sae_transfer_residual_view"] = view
        rows = [
            headline("disentanglement_score", results["disentangle_score"], True),
            headline("cause_score", results["cause_score"], True),
            headline("isolation_score", results["isolation_score"], True),
        ]
        bad = [r["metric_name"] for r in rows if math.isnan(r["value"])]
        if bad:
            return self.skipped(
                f"SAEBench's RAVEL produced NaN for {bad}: the model answered too few prompts correctly to fill "
                "a validation batch (raise num_pairs_per_attribute / lower llm_batch_size, or the model lacks the facts)",
                raw=raw,
            )
        return self.result(raw, rows)
