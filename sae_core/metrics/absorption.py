"""SAEBench *feature absorption* (first-letter task) on a given model.

SAEBench's ``sae_bench.evals.absorption.main.run_eval`` loads the model by *name*
(``HookedTransformer.from_pretrained_no_processing(config.model_name)``). This adapter adapts at
that boundary: it performs the same two steps ``run_eval`` performs, calling the same SAEBench
functions with the given ``HookedTransformer``:

1. ``k_sparse_probing.run_k_sparse_probing_experiment(model=..., sae=...)``
2. if at least ``min_feats_for_eval`` letters have a ground-truth probe F1 above ``min_GT_probe_f1``,
   ``feature_absorption.run_feature_absortion_experiment(model=..., sae=...)``, then
   ``main._aggregate_results_df`` and the per-letter filter / mean / stdev of ``run_eval``.

Differences from ``run_eval`` (all about where files go, none about numbers):

* probe and experiment folders are passed explicitly (SAEBench's defaults are inside the installed
  package and cache the first-letter probe by ``model.cfg.model_name``, which a pruned model
  shares with its parent): the LLM probe goes to ``<llm cache>/absorption/<hash of model weights +
  template + seed + words + versions>/entry/probes`` (:mod:`sae_core.metrics.safe_cache`: the probe
  module as safetensors, never ``torch.load(weights_only=False)``; kept across runs), per-SAE results to
  a temporary folder that is removed afterwards (``force=True``, as SAE-specific caches keyed by
  SAE name would be stale);
* ``random`` / ``torch`` are seeded with ``random_seed`` first (``run_eval`` doesn't seed the
  vocabulary train/test split), and restored afterwards;
* when too few first-letter features are found, ``run_eval`` prints and stops; here the result is
  ``status="skipped"`` with that reason.

Data: none to download -- SAEBench builds the word list from the model's vocabulary (all purely
alphabetic tokens; offline, the toy stand-in list via ``ABSORPTION_WORDS``, see
:mod:`sae_core.datasets.mirror`).

Tokenizer requirements (checked up front; unmet -> ``status="skipped"`` with the reason, because
SAEBench would otherwise crash or silently read wrong token positions):

* every answer token `` A`` ... `` Z`` is a single token, and the template tail
  ``" has the first letter:"`` is ``-prompt_token_pos - 1`` tokens (SAEBench right-pads batched
  ICL prompts and reads a fixed position from the end);
* every letter a-z has a word in the seeded 80 % train split of the word list (SAEBench trains one
  k-sparse probe per letter seen there and later indexes all 26).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline, reseed_everything, reseeded_calls, to_jsonable


class AbsorptionSettings(MetricSettings):
    """Mirrors ``AbsorptionEvalConfig``; defaults are SAEBench's."""

    random_seed: int = 42
    f1_jump_threshold: float = 0.03
    max_k_value: int = 10
    prompt_template: str = "{word} has the first letter:"
    prompt_token_pos: int = -6
    llm_batch_size: int = 10
    #: None -> the model's own dtype.
    llm_dtype: str | None = None
    k_sparse_probe_l1_decay: float = 0.01
    k_sparse_probe_batch_size: int = 4096
    k_sparse_probe_num_epochs: int = 50
    min_GT_probe_f1: float = 0.6
    min_feats_for_eval: int = 20
    eval_k_sparse_probe_batch_size: int = 24
    precalc_k_sparse_probe_sae_acts: bool = False


TOY_DEFAULTS = AbsorptionSettings(
    max_k_value=4,
    llm_batch_size=32,
    k_sparse_probe_num_epochs=20,
    k_sparse_probe_batch_size=512,
    min_feats_for_eval=2,
    eval_k_sparse_probe_batch_size=64,
    precalc_k_sparse_probe_sae_acts=True,
)
HUB_DEFAULTS = AbsorptionSettings()


def absorption_words(tokenizer: Any) -> list[str]:
    """The word list SAEBench will use: the vocabulary's alphabetic tokens, or the offline stand-in
    when :data:`~sae_core.datasets.standins.common.ABSORPTION_WORDS` is mapped."""
    from sae_bench.evals.absorption import common

    return list(common.get_alpha_tokens(tokenizer))


def prompt_layout_problems(tokenizer: Any, prompt_template: str, prompt_token_pos: int) -> list[str]:
    """What breaks SAEBench's fixed-position reading of ``"{word} has the first letter:"`` prompts.

    SAEBench batches ICL prompts (10 examples ``"<word> has the first letter: <X>"`` + the query), right
    pads them and reads position ``prompt_token_pos`` of every row, and requires equal prompt lengths;
    that only works if every answer `` A`` ... `` Z`` is one token and the template tail is exactly
    ``-prompt_token_pos - 1`` tokens. Otherwise it silently reads the wrong positions.
    """
    from sae_bench.evals.absorption.vocab import LETTERS_UPPER

    problems = []
    multi = [f" {c}" for c in LETTERS_UPPER if len(tokenizer.encode(f" {c}", add_special_tokens=False)) != 1]
    if multi:
        problems.append(f"answer tokens {multi} are not single tokens")
    tail = prompt_template.split("{word}")[-1]
    n_tail = len(tokenizer.encode(tail, add_special_tokens=False))
    if n_tail != -prompt_token_pos - 1:
        problems.append(f"template tail {tail!r} is {n_tail} tokens, prompt_token_pos={prompt_token_pos} needs {-prompt_token_pos - 1}")
    return problems


def icl_prompt_too_long(hooked_model: Any, words: list[str], prompt_template: str) -> str | None:
    """SAEBench's prompts carry 10 in-context examples; they must fit the model's context window."""
    from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter

    if len(words) < 11:
        return f"the absorption word list has only {len(words)} usable words"
    prompt = create_icl_prompt(words[0], examples=words[1:11], base_template=prompt_template,
                               answer_formatter=first_letter_formatter(), max_icl_examples=10,
                               shuffle_examples=False, prepend_separator_to_first_example=True)
    # (HookedTransformer.to_tokens would silently truncate to n_ctx, which is exactly the failure to detect)
    n_tokens = len(hooked_model.tokenizer.encode(prompt.base, add_special_tokens=False)) + int(hooked_model.cfg.default_prepend_bos)
    if n_tokens > hooked_model.cfg.n_ctx:
        return (f"SAEBench's first-letter prompts (10 in-context examples) are {n_tokens} tokens, longer than the "
                f"model's context of {hooked_model.cfg.n_ctx}")
    return None


def letters_missing_from_train_split(words: list[str], seed: int, train_fraction: float = 0.8) -> list[str]:
    """Letters without a word in SAEBench's probe train split.

    SAEBench splits with ``random.sample(vocab, len(vocab))`` right after this adapter seeds
    ``random`` with ``seed`` (``probing.create_dataset_probe_training``, the first draw), and later
    indexes a k-sparse probe for every letter a-z, so a letter absent from the train split is a
    ``KeyError`` deep inside SAEBench.
    """
    from sae_bench.evals.absorption.vocab import LETTERS

    shuffled = random.Random(seed).sample(words, len(words))
    train = shuffled[: int(len(shuffled) * train_fraction)]
    present = {w.strip()[0].lower() for w in train}
    return [letter for letter in LETTERS if letter not in present]


class _IdOrderedVocab:
    """The tokenizer, except that ``.vocab`` lists the tokens in id order."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab(self) -> dict[str, int]:
        return dict(sorted(self._tokenizer.get_vocab().items(), key=lambda item: item[1]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@contextlib.contextmanager
def vocab_in_id_order():
    """SAEBench builds absorption's word list by iterating ``tokenizer.vocab`` (``vocab.get_tokens``); a fast
    tokenizer's ``vocab`` is a fresh dict from a Rust hash map, in another order at every call, and the
    word order feeds the seeded train/test split and the in-context examples: the same SAE got
    different letters, probes and scores from one run to the next (measured on the spelling model:
    13 letters evaluated, mean absorption 0.254 vs 0.438 for the same SAE in one process). While
    active, ``get_tokens`` sees the vocabulary in token-id order: one word list, every run."""
    import sae_bench.evals.absorption.vocab as vocab

    original = vocab.get_tokens

    def get_tokens(tokenizer: Any, *args: Any, **kwargs: Any) -> list[str]:
        return original(_IdOrderedVocab(tokenizer), *args, **kwargs)

    vocab.get_tokens = get_tokens
    try:
        yield
    finally:
        vocab.get_tokens = original


@contextlib.contextmanager
def _forward_stops_after(hooked_model: Any, layer: int):
    """SAEBench's absorption only reads the hook's activation from ``run_with_cache`` (its two calls drop
    the logits), but runs the whole model: with a 262k-token vocabulary the LM head is most of the
    forward, and its logits for SAEBench's fixed 64-prompt probe batches take ~4 GB. While active, a
    ``run_with_cache`` without ``stop_at_layer`` stops after ``layer``; the activations are identical."""
    had_own = "run_with_cache" in vars(hooked_model)
    original = hooked_model.run_with_cache

    def run_with_cache(*args, **kwargs):
        kwargs.setdefault("stop_at_layer", layer + 1)
        return original(*args, **kwargs)

    hooked_model.run_with_cache = run_with_cache
    try:
        yield
    finally:
        if had_own:
            hooked_model.run_with_cache = original
        else:
            del hooked_model.run_with_cache


class Absorption(MetricFamily):
    name = "absorption"
    settings_cls = AbsorptionSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS
    #: Hand SAEBench a :class:`~sae_core.metrics.shared_work.SharedModel`: hook-free ``run_with_cache``
    #: calls recorded once per model and served when a later run makes the same call (identical
    #: results). Off by default: the words absorption probes are picked through the SAE and each prompt
    #: draws random in-context examples, so another SAE's batches rarely match (measured: none served
    #: for a second SAE on the tests' spelling model; SAEBench's draws also differ between a run that
    #: trains the first-letter probe and one that loads it). ``True``: on.
    share_model_work: bool = False
    last_shared_work: dict[str, Any] = {"status": "off"}

    def _shared_calls(self, inputs: MetricInputs, config: AbsorptionSettings, llm_dtype: str, layer: int,
                      words: list[str]) -> Any:
        from sae_core.metrics import shared_work as shared
        from sae_core.metrics.base import model_fingerprint

        key = shared.shared_calls_key(family=self.name, model_fingerprint=model_fingerprint(inputs.hooked_model),
                                      tokenizer=inputs.hooked_model.tokenizer, settings=config, llm_dtype=llm_dtype,
                                      device=inputs.device, extra={"layer": layer, "words": words})
        self._calls = shared.shared_model_calls(inputs.hooked_model, self.cache_dir(inputs, "shared_calls", key), key,
                                                inputs.device, enabled=self.share_model_work)
        return self._calls

    def run(self, inputs: MetricInputs, config: AbsorptionSettings) -> MetricResult:
        with vocab_in_id_order():
            return self._run(inputs, config)

    def _run(self, inputs: MetricInputs, config: AbsorptionSettings) -> MetricResult:
        from sae_bench.evals.absorption import main as absorption_main
        from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
        from sae_bench.evals.absorption.eval_output import (
            EVAL_TYPE_ID_ABSORPTION,
            AbsorptionEvalOutput,
            AbsorptionMeanMetrics,
            AbsorptionMetricCategories,
            AbsorptionResultDetail,
        )
        from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
        from sae_bench.evals.absorption import k_sparse_probing
        from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment

        hooked_model, device = inputs.hooked_model, inputs.device
        llm_dtype = self.llm_dtype(inputs, config)
        eval_config = AbsorptionEvalConfig(
            model_name=inputs.model_name,
            random_seed=config.random_seed,
            f1_jump_threshold=config.f1_jump_threshold,
            max_k_value=config.max_k_value,
            prompt_template=config.prompt_template,
            prompt_token_pos=config.prompt_token_pos,
            llm_batch_size=config.llm_batch_size,
            llm_dtype=llm_dtype,
            k_sparse_probe_l1_decay=config.k_sparse_probe_l1_decay,
            k_sparse_probe_batch_size=config.k_sparse_probe_batch_size,
            k_sparse_probe_num_epochs=config.k_sparse_probe_num_epochs,
            min_GT_probe_f1=config.min_GT_probe_f1,
            min_feats_for_eval=config.min_feats_for_eval,
            eval_k_sparse_probe_batch_size=config.eval_k_sparse_probe_batch_size,
            precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts,
        )
        layout_problems = prompt_layout_problems(hooked_model.tokenizer, config.prompt_template, config.prompt_token_pos)
        if layout_problems:
            return self.skipped("SAEBench's first-letter prompts don't fit this tokenizer: " + "; ".join(layout_problems))
        words = absorption_words(hooked_model.tokenizer)
        too_long = icl_prompt_too_long(hooked_model, words, config.prompt_template)
        if too_long:
            return self.skipped(too_long)
        missing = letters_missing_from_train_split(words, config.random_seed)
        if missing:
            return self.skipped(
                f"SAEBench's first-letter probes need a training word for every letter a-z, but the word list "
                f"({len(words)} single-token alphabetic words) has none for {missing} in its seeded 80% train split"
            )

        # as SAEBench's run_eval: grad on, random / torch seeded
        with self.saebench(inputs, llm_dtype, seed=config.random_seed, grad=True, reseed=True) as sae:
            layer = sae.cfg.hook_layer
            # the first-letter probe (torch.save of the module, once): safetensors, kept across runs (safe_cache)
            llm_cache = self.llm_cache(
                inputs, layer, config.prompt_template, config.prompt_token_pos, config.random_seed, llm_dtype, words,
                modules=("sae_bench.evals.absorption.probing", "sae_bench.evals.absorption.common"),
            )
            sae_name = "custom_sae"
            # reseeded_calls: the same draws whether the LLM probe was cached or not
            with llm_cache as llm_folder, \
                    tempfile.TemporaryDirectory(dir=inputs.scratch_dir, prefix="absorption-run-") as run_dir, \
                    _forward_stops_after(hooked_model, layer), \
                    reseeded_calls(config.random_seed, (k_sparse_probing, "train_k_sparse_probes")), \
                    self._shared_calls(inputs, config, llm_dtype, layer, words) as hooked_model:
                probes_dir = llm_folder / "probes"
                k_sparse_dir = Path(run_dir) / "k_sparse_probing"
                try:
                    k_sparse = run_k_sparse_probing_experiment(
                        model=hooked_model,
                        sae=sae,
                        layer=layer,
                        sae_name=sae_name,
                        force=True,
                        max_k_value=config.max_k_value,
                        f1_jump_threshold=config.f1_jump_threshold,
                        prompt_template=config.prompt_template,
                        prompt_token_pos=config.prompt_token_pos,
                        device=device,
                        experiment_dir=k_sparse_dir,
                        probes_dir=probes_dir,
                        k_sparse_probe_l1_decay=config.k_sparse_probe_l1_decay,
                        k_sparse_probe_batch_size=config.k_sparse_probe_batch_size,
                        k_sparse_probe_num_epochs=config.k_sparse_probe_num_epochs,
                        eval_batch_size=config.eval_k_sparse_probe_batch_size,
                        precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts,
                        verbose=False,
                    )
                except KeyError as error:
                    raise RuntimeError(
                        f"SAEBench's k-sparse probing found no training word for letter index {error}: the vocabulary's "
                        "random train split (seeded by random_seed) lacks a letter. Use a tokenizer with more "
                        "alphabetic tokens per letter or another random_seed."
                    ) from error
                good_letters = k_sparse["f1_probe"] > config.min_GT_probe_f1
                if int(good_letters.sum()) < config.min_feats_for_eval:
                    reason = (
                        f"only {int(good_letters.sum())} first-letter features have ground-truth probe F1 > "
                        f"{config.min_GT_probe_f1} (need {config.min_feats_for_eval}); SAEBench's run_eval does not "
                        "evaluate absorption then"
                    )
                    raw = {"k_sparse_probing": to_jsonable(k_sparse[["letter", "f1_probe", "auc_probe"]].to_dict("records"))}
                    return self.skipped(reason, raw=raw, eval_config=eval_config)
                reseed_everything(config.random_seed)
                raw_df = run_feature_absortion_experiment(
                    model=hooked_model,
                    sae=sae,
                    layer=layer,
                    sae_name=sae_name,
                    force=True,
                    max_k_value=config.max_k_value,
                    feature_split_f1_jump_threshold=config.f1_jump_threshold,
                    prompt_template=config.prompt_template,
                    prompt_token_pos=config.prompt_token_pos,
                    batch_size=config.llm_batch_size,
                    device=device,
                    experiment_dir=Path(run_dir) / "feature_absorption",
                    sparse_probing_experiment_dir=k_sparse_dir,
                    probes_dir=probes_dir,
                )
            self.last_shared_work = self._calls.summary
            agg_df = absorption_main._aggregate_results_df(raw_df)

            # The aggregation of SAEBench's run_eval (evals/absorption/main.py), unchanged.
            fractions, full_rates, n_split, details = [], [], [], []
            for _, row in agg_df.iterrows():
                letter = row["letter"]
                if k_sparse[k_sparse["letter"] == letter]["f1_probe"].item() > config.min_GT_probe_f1:
                    fractions.append(row["mean_absorption_fraction"])
                    full_rates.append(row["full_absorption_rate"])
                    n_split.append(row["num_split_feats"])
                    details.append(
                        AbsorptionResultDetail(
                            first_letter=letter,
                            mean_absorption_fraction=row["mean_absorption_fraction"],
                            full_absorption_rate=row["full_absorption_rate"],
                            num_full_absorption=row["num_full_absorption"],
                            num_probe_true_positives=row["num_probe_true_positives"],
                            num_split_features=row["num_split_feats"],
                        )
                    )
            if len(fractions) < 2:
                return self.skipped(
                    f"absorption was measured for {len(fractions)} letter(s); SAEBench's summary needs >= 2 (standard deviation)",
                    eval_config=eval_config,
                )
            means = AbsorptionMeanMetrics(
                mean_absorption_fraction_score=statistics.mean(fractions),
                mean_full_absorption_score=statistics.mean(full_rates),
                mean_num_split_features=statistics.mean(n_split),
                std_dev_absorption_fraction_score=statistics.stdev(fractions),
                std_dev_full_absorption_score=statistics.stdev(full_rates),
                std_dev_num_split_features=statistics.stdev(n_split),
            )
            raw = self.eval_output_raw(
                AbsorptionEvalOutput, sae,
                eval_type_id=EVAL_TYPE_ID_ABSORPTION,
                eval_config=eval_config,
                eval_result_metrics=AbsorptionMetricCategories(mean=means),
                eval_result_details=details,
            )
        rows = [
            headline("mean_absorption_fraction_score", means.mean_absorption_fraction_score, False),
            headline("mean_full_absorption_score", means.mean_full_absorption_score, False),
            headline("mean_num_split_features", means.mean_num_split_features, None),
            headline("n_letters_evaluated", len(fractions), None),
        ]
        return self.result(raw, rows)
