"""SAEBench *autointerp* (LLM-judged explanation + detection score) on a given model, via
``sae_bench.evals.autointerp.main.run_eval_single_sae`` (takes the SAE and the ``HookedTransformer``).

It needs an OpenAI-compatible chat-completions endpoint. Configuration, from the environment:

``SAE_TRANSFER_AUTOINTERP_API_KEY``   API key (required; without it the metric is *skipped*, with
                                      that reason in ``MetricResult.reason``)
``SAE_TRANSFER_AUTOINTERP_BASE_URL``  endpoint base URL (optional; default: OpenAI's)
``SAE_TRANSFER_AUTOINTERP_MODEL``     judge model name (optional; default: SAEBench's hard-coded
                                      ``gpt-4o-mini``)

SAEBench constructs ``OpenAI(api_key=...)`` itself; the adapter substitutes, for the duration of the
call, a constructor that also passes ``base_url`` and (when a judge model is configured) rewrites
the ``model`` argument of ``chat.completions.create``. Token windows are cached in
``artifacts_dir/autointerp/<hash of tokenizer + settings>/``. Data: ``dataset_name`` (default
``monology/pile-uncopyrighted``), served offline by
:func:`~sae_core.datasets.mirror.dataset_overrides`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline

ENV_API_KEY = "SAE_TRANSFER_AUTOINTERP_API_KEY"
ENV_BASE_URL = "SAE_TRANSFER_AUTOINTERP_BASE_URL"
ENV_MODEL = "SAE_TRANSFER_AUTOINTERP_MODEL"


class AutoInterpSettings(MetricSettings):
    """Mirrors ``AutoInterpEvalConfig``; defaults are SAEBench's."""

    n_latents: int = 1000
    dead_latent_threshold: float = 15
    random_seed: int = 42
    dataset_name: str = "monology/pile-uncopyrighted"
    llm_context_size: int = 128
    #: None -> SAEBench's LLM_NAME_TO_BATCH_SIZE for known models, else 32.
    llm_batch_size: int | None = None
    #: None -> the model's own dtype.
    llm_dtype: str | None = None
    buffer: int = 10
    no_overlap: bool = True
    act_threshold_frac: float = 0.01
    total_tokens: int = 2_000_000
    scoring: bool = True
    max_tokens_in_explanation: int = 30
    use_demos_in_explanation: bool = True
    n_top_ex_for_generation: int = 10
    n_iw_sampled_ex_for_generation: int = 5
    n_top_ex_for_scoring: int = 2
    n_random_ex_for_scoring: int = 10
    n_iw_sampled_ex_for_scoring: int = 2


TOY_DEFAULTS = AutoInterpSettings(
    n_latents=4,
    dead_latent_threshold=1,
    llm_context_size=64,
    llm_batch_size=16,
    buffer=4,
    total_tokens=20_000,
    n_top_ex_for_generation=4,
    n_iw_sampled_ex_for_generation=2,
    n_top_ex_for_scoring=2,
    n_random_ex_for_scoring=4,
    n_iw_sampled_ex_for_scoring=1,
)
HUB_DEFAULTS = AutoInterpSettings()


def judge_config(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    env = os.environ if environ is None else environ
    return {
        "api_key": env.get(ENV_API_KEY) or None,
        "base_url": env.get(ENV_BASE_URL) or None,
        "model": env.get(ENV_MODEL) or None,
    }


class _ModelOverride:
    """``client.chat.completions.create(model=...)`` with the configured judge model."""

    def __init__(self, client: Any, model: str):
        self._client, self._model = client, model

    @property
    def chat(self):
        return self

    @property
    def completions(self):
        return self

    def create(self, *args: Any, **kwargs: Any):
        kwargs["model"] = self._model
        return self._client.chat.completions.create(*args, **kwargs)


@contextlib.contextmanager
def judge_client(base_url: str | None, model: str | None) -> Iterator[None]:
    """Make SAEBench's ``OpenAI(api_key=...)`` honour ``base_url`` / ``model`` during the block."""
    import sae_bench.evals.autointerp.main as ai_main

    original = ai_main.OpenAI

    def make_client(*args: Any, **kwargs: Any):
        if base_url is not None:
            kwargs.setdefault("base_url", base_url)
        client = original(*args, **kwargs)
        return _ModelOverride(client, model) if model else client

    ai_main.OpenAI = make_client
    try:
        yield
    finally:
        ai_main.OpenAI = original


class AutoInterp(MetricFamily):
    name = "autointerp"
    settings_cls = AutoInterpSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS

    def run(self, inputs: MetricInputs, config: AutoInterpSettings) -> MetricResult:
        import torch

        judge = judge_config()
        if not judge["api_key"]:
            return self.skipped(
                f"autointerp needs an LLM judge: set {ENV_API_KEY} (and optionally {ENV_BASE_URL}, {ENV_MODEL}) "
                "to an OpenAI-compatible chat-completions endpoint"
            )

        import sae_bench.evals.autointerp.main as ai_main
        from sae_bench.evals.autointerp.eval_config import AutoInterpEvalConfig
        from sae_bench.evals.autointerp.eval_output import (
            AutoInterpEvalOutput,
            AutoInterpMetricCategories,
            AutoInterpMetrics,
        )

        hooked_model, device = inputs.hooked_model, inputs.device
        llm_dtype = self.llm_dtype(inputs, config)
        eval_config = AutoInterpEvalConfig(
            model_name=inputs.model_name,
            n_latents=config.n_latents,
            dead_latent_threshold=config.dead_latent_threshold,
            random_seed=config.random_seed,
            dataset_name=config.dataset_name,
            llm_context_size=config.llm_context_size,
            llm_batch_size=self.llm_batch_size(inputs, config.llm_batch_size),
            llm_dtype=llm_dtype,
            buffer=config.buffer,
            no_overlap=config.no_overlap,
            act_threshold_frac=config.act_threshold_frac,
            total_tokens=config.total_tokens,
            scoring=config.scoring,
            max_tokens_in_explanation=config.max_tokens_in_explanation,
            use_demos_in_explanation=config.use_demos_in_explanation,
            n_top_ex_for_generation=config.n_top_ex_for_generation,
            n_iw_sampled_ex_for_generation=config.n_iw_sampled_ex_for_generation,
            n_top_ex_for_scoring=config.n_top_ex_for_scoring,
            n_random_ex_for_scoring=config.n_random_ex_for_scoring,
            n_iw_sampled_ex_for_scoring=config.n_iw_sampled_ex_for_scoring,
        )
        vocab = sorted(hooked_model.tokenizer.get_vocab().items())
        tokenizer_key = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
        folder = self.cache_dir(inputs, tokenizer_key, config.dataset_name, config.llm_context_size, config.total_tokens)
        with self.saebench(inputs, llm_dtype, grad=False) as sae, judge_client(judge["base_url"], judge["model"]):
            per_latent = ai_main.run_eval_single_sae(eval_config, sae, hooked_model, device, str(folder), judge["api_key"])
        if not per_latent:
            return self.skipped("SAEBench's autointerp found no alive latent with activating examples", eval_config=eval_config)
        scores = torch.tensor([r["score"] for r in per_latent.values()], dtype=torch.float64)
        score = scores.mean().item()
        std = scores.std().item() if len(scores) > 1 else float("nan")
        raw = self.eval_output_raw(
            AutoInterpEvalOutput, sae,
            eval_config=eval_config,
            eval_result_metrics=AutoInterpMetricCategories(
                autointerp=AutoInterpMetrics(autointerp_score=score, autointerp_std_dev=std)
            ),
            eval_result_details=[],
            eval_result_unstructured=per_latent,
        )
        rows = [
            headline("autointerp_score", score, True),
            headline("autointerp_std_dev", std, None),
            headline("n_latents_scored", len(per_latent), None),
        ]
        return self.result(raw, rows)
