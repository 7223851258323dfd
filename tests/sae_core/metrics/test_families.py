"""SAEBench metric adapters, run for real (offline) on a small toy-world model.

The model here is built with the toy world's own generators and trainer, on a city-heavy mix so
that a 2-layer, 64-wide model learns the city -> country / continent / language facts RAVEL needs
in about a minute (kept in pytest's cache folder afterwards). The SAE is a sae-lens TopK SAE whose
decoder rows are sampled activation directions (cheap, deterministic, and alive). Absorption needs a
model that linearly encodes first letters and a context of ~90 tokens; a toy model doesn't learn
spelling in a test's budget, so its test plants a first-letter direction into the token
embeddings of an untrained 2-layer GPT-2 (the adapter and SAEBench's code path run unchanged).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from sae_core.datasets import ABSORPTION_WORDS, dataset_overrides
from sae_core.metrics import (
    COLUMNS,
    METRIC_NAMES,
    MetricResult,
    flatten_result,
    get_metric,
    results_frame,
    run_metric,
    sae_bench_version,
)
from sae_core.metrics.registry import settings_for, toy_dataset_paths

HOOK = "blocks.1.hook_resid_post"
# City-heavy toy corpus: enough for the facts RAVEL filters on (measured: >= 4 distinct correct
# values per attribute), still ~1 minute to train on 2 busy CPU cores.
FACTS_WORLD = {"n_city": 1500, "n_spelling": 200, "n_bio": 300, "vocab_size": 512, "train_steps": 700}


# --------------------------------------------------------------------------- fixtures
def build_facts_world(folder: Path) -> None:
    from sae_core.toy.corpus import make_bio, make_city_facts, make_spelling
    from sae_core.toy.world import ToyWorldConfig, pack_tokens, train_language_model, train_tokenizer

    rng = random.Random(0)
    texts = [make_city_facts(rng).text for _ in range(FACTS_WORLD["n_city"])]
    texts += [make_spelling(rng).text for _ in range(FACTS_WORLD["n_spelling"])]
    texts += [make_bio(rng).text for _ in range(FACTS_WORLD["n_bio"])]
    rng.shuffle(texts)
    cfg = ToyWorldConfig(vocab_size=FACTS_WORLD["vocab_size"], train_steps=FACTS_WORLD["train_steps"], d_model=64,
                         n_head=4, n_ctx=64, batch_size=32)
    # The tokenizer (only) also sees every answer letter " A" ... " Z": SAEBench's absorption prompts need them
    # to be single tokens; the toy lexicon's drills only cover 21 letters.
    alphabet = " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    tokenizer = train_tokenizer(texts + [alphabet] * 400, cfg.vocab_size)
    model, _ = train_language_model(cfg, tokenizer, pack_tokens(tokenizer, texts, cfg.n_ctx), progress=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def facts_world(request, tmp_path_factory) -> Path:
    """Built once and kept in pytest's cache folder (``.pytest_cache``) when the cache plugin is on."""
    import hashlib
    import inspect

    key = hashlib.sha256((json.dumps(FACTS_WORLD, sort_keys=True) + inspect.getsource(build_facts_world)).encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir(f"sae_metrics_facts_world_{key}")) if cache is not None else tmp_path_factory.mktemp("facts_world")
    folder = root / "model"
    if not (root / "complete").exists():
        build_facts_world(folder)
        (root / "complete").write_text("ok\n")
    return folder


@pytest.fixture(scope="module")
def lm(facts_world):
    from sae_core.models import load_language_model

    return load_language_model(str(facts_world))


@pytest.fixture(scope="module")
def hooked(lm):
    return lm.hooked()  # TransformerLens' default processing, as the pipeline uses


def sampled_sae(hooked_model, kind: str = "topk", d_sae: int = 256, seed: int = 0):
    """A sae-lens SAE whose decoder rows are normalised activation samples at HOOK."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from sae_core.toy.corpus import generate_corpus

    torch.manual_seed(seed)
    d_in = hooked_model.cfg.d_model
    metadata = SAEMetadata(hook_name=HOOK, model_name="toy", context_size=64, prepend_bos=True)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=metadata))
    elif kind == "relu":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata))
    texts = [doc.text for doc in generate_corpus(64, seed=seed + 11)]
    tokens = hooked_model.to_tokens(texts)[:, :48]
    with torch.no_grad():
        _, cache = hooked_model.run_with_cache(tokens, names_filter=[HOOK])
        acts = cache[HOOK].reshape(-1, d_in)
        mean = acts.mean(0)
        directions = acts[torch.randperm(len(acts))[:d_sae]] - mean
        directions = directions / directions.norm(dim=-1, keepdim=True)
        sae.W_dec.data = directions.clone()
        sae.W_enc.data = directions.T.clone()
        sae.b_dec.data = mean.clone()
        if kind != "topk":
            sae.b_enc.data = torch.full((d_sae,), -0.3 * float((acts - mean).norm(dim=-1).mean()))
        if kind == "jumprelu":
            sae.threshold.data = torch.full((d_sae,), 0.05)
    return sae


@pytest.fixture(scope="module")
def sae(hooked):
    return sampled_sae(hooked)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sae_bench_artifacts")


def run_toy(name, sae, lm, hooked_model, artifacts, **kwargs) -> MetricResult:
    return run_metric(name, sae, hooked_model, lm.hf_model, lm.tokenizer, profile="toy", artifacts_dir=artifacts, **kwargs)


def assert_ok_and_finite(result: MetricResult, expected: set[str]):
    assert result.status == "ok", result.reason
    values = result.headline_dict()
    assert expected <= set(values), sorted(values)
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    assert not bad, bad
    json.dumps(result.model_dump(mode="json"))  # the whole result is JSON-able
    assert result.raw["eval_config"]


# --------------------------------------------------------------------------- stand-in datasets
def test_stand_ins_have_saebench_columns_and_labels(tmp_path):
    import pyarrow.parquet as pq
    from sae_bench.sae_bench_utils.dataset_info import chosen_classes_per_dataset, gender_dict, profession_dict

    from sae_core.datasets import build_eval_datasets
    from sae_core.toy.lexicon import PROFESSIONS

    paths = build_eval_datasets(tmp_path / "a", seed=0)
    assert set(paths) == {"LabHC/bias_in_bios", "adamkarvonen/ravel_prompts", "Skylion007/openwebtext",
                          "monology/pile-uncopyrighted", ABSORPTION_WORDS, "sae_core/sae_probes_data"}
    for split in ("train", "test"):
        table = pq.read_table(paths["LabHC/bias_in_bios"] / f"{split}.parquet").to_pandas()
        assert list(table.columns) == ["hard_text", "profession", "gender"]
        assert set(table["gender"]) == set(gender_dict.values())
        assert set(table["profession"]) == {profession_dict[p] for p in PROFESSIONS}
        for _, row in table.head(50).iterrows():  # labels mean what SAEBench says they mean
            title = [p for p, i in profession_dict.items() if i == row["profession"]][0]
            assert PROFESSIONS[title][0] in row["hard_text"]
            assert (" He " in row["hard_text"]) == (row["gender"] == gender_dict["male"])
    # every bias-in-bios class set SAEBench probes is present
    for name in ("LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3"):
        assert {int(c) for c in chosen_classes_per_dataset[name]} <= set(table["profession"])
    ravel = paths["adamkarvonen/ravel_prompts"]
    attributes = json.loads((ravel / "ravel_city_entity_attributes.json").read_text())
    assert attributes["Paris"] == {"Country": "France", "Continent": "Europe", "Language": "French"}
    templates = json.loads((ravel / "ravel_city_attribute_to_prompts.json").read_text())
    assert all("%s" in t for ts in templates.values() for t in ts)
    assert pq.read_table(paths["Skylion007/openwebtext"] / "train.parquet").column_names == ["text"]
    # deterministic per seed
    again = build_eval_datasets(tmp_path / "b", seed=0)
    other = build_eval_datasets(tmp_path / "c", seed=1)
    for key in ("LabHC/bias_in_bios", "adamkarvonen/ravel_prompts", "Skylion007/openwebtext", ABSORPTION_WORDS):
        files = sorted(p.name for p in paths[key].iterdir())
        assert all((paths[key] / f).read_bytes() == (again[key] / f).read_bytes() for f in files)
    assert (paths["LabHC/bias_in_bios"] / "train.parquet").read_bytes() != (other["LabHC/bias_in_bios"] / "train.parquet").read_bytes()


def test_dataset_overrides_redirect_only_mapped_ids_and_restore(tmp_path, monkeypatch):
    import datasets
    import sae_bench.evals.absorption.common as absorption_common
    import sae_bench.evals.ravel.instance as ravel_instance
    import sae_bench.evals.scr_and_tpp.dataset_creation as scr_data
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils
    import sae_lens.training.activations_store as activations_store

    paths = toy_dataset_paths(tmp_path / "cache", seed=0)
    calls = []

    def fake_original(path, name=None, *args, **kwargs):  # stands in for the hub
        calls.append(path)
        return "from-hub"

    monkeypatch.setattr(dataset_utils, "load_dataset", fake_original)
    originals = (datasets.load_dataset, scr_data.load_dataset, activations_store.load_dataset,
                 ravel_instance.snapshot_download, absorption_common.get_alpha_tokens)
    with dataset_overrides(paths):
        bios = dataset_utils.load_dataset("LabHC/bias_in_bios")
        assert set(bios) == {"train", "test"} and bios["train"].column_names == ["hard_text", "profession", "gender"]
        assert scr_data.load_dataset("LabHC/bias_in_bios")["test"].num_rows == bios["test"].num_rows
        stream = activations_store.load_dataset("Skylion007/openwebtext", split="train", streaming=True)
        assert isinstance(stream, datasets.IterableDataset) and "text" in next(iter(stream))
        assert dataset_utils.load_dataset("fancyzhx/ag_news") == "from-hub" and calls == ["fancyzhx/ag_news"]
        target = tmp_path / "ravel_base"
        ravel_instance.snapshot_download(repo_id="adamkarvonen/ravel_prompts", repo_type="dataset",
                                         local_dir=str(target), allow_patterns="*.json")
        assert (target / "ravel_city_entity_attributes.json").exists()
        with pytest.raises(RuntimeError, match="already redirected"):
            with dataset_overrides({"LabHC/bias_in_bios": paths["adamkarvonen/ravel_prompts"]}):
                pass
        with dataset_overrides({"LabHC/bias_in_bios": paths["LabHC/bias_in_bios"]}):  # nesting the same is fine
            assert dataset_utils.load_dataset("LabHC/bias_in_bios", split="train").num_rows == bios["train"].num_rows
        assert dataset_utils.load_dataset("LabHC/bias_in_bios") is not None  # still active after the inner block
    assert dataset_utils.load_dataset is fake_original
    assert (datasets.load_dataset, scr_data.load_dataset, activations_store.load_dataset,
            ravel_instance.snapshot_download, absorption_common.get_alpha_tokens) == originals
    with pytest.raises(FileNotFoundError):
        with dataset_overrides({"LabHC/bias_in_bios": tmp_path / "missing"}):
            pass


def test_absorption_word_stand_in_keeps_single_token_alphabetic_words(lm, tmp_path):
    import sae_bench.evals.absorption.common as absorption_common

    folder = tmp_path / "words"
    folder.mkdir()
    (folder / "words.json").write_text(json.dumps([" Paris", "Paris", " in", "3d", "", " Paris", " zzzzqqq"]))
    with dataset_overrides({ABSORPTION_WORDS: folder}):
        words = absorption_common.get_alpha_tokens(lm.tokenizer)
    assert " Paris" in words and " in" in words and "3d" not in words and " zzzzqqq" not in words
    assert len(words) == len(set(words))
    assert all(len(lm.tokenizer.encode(w, add_special_tokens=False)) == 1 for w in words)


# --------------------------------------------------------------------------- the six metrics
def test_core(sae, lm, hooked, artifacts):
    result = run_toy("core", sae, lm, hooked, artifacts)
    assert_ok_and_finite(result, {"ce_loss_score", "explained_variance", "mse", "cossim", "l0", "l1", "frac_alive",
                                  "frac_dead", "kl_div_score"})
    values = result.headline_dict()
    assert values["l0"] == pytest.approx(8.0)  # TopK k=8 (special tokens excluded)
    assert 0.0 <= values["frac_alive"] <= 1.0 and values["frac_alive"] + values["frac_dead"] == pytest.approx(1.0)
    assert result.raw["eval_type_id"] == "core"
    assert len(result.raw["eval_result_details"]) == sae.cfg.d_sae


@pytest.mark.parametrize("kind", ["relu", "jumprelu"])
def test_core_accepts_other_sae_architectures(kind, lm, hooked, artifacts):
    sae = sampled_sae(hooked, kind=kind, d_sae=128)
    result = run_toy("core", sae, lm, hooked, artifacts,
                     settings={"n_eval_reconstruction_batches": 1, "n_eval_sparsity_variance_batches": 2})
    assert_ok_and_finite(result, {"ce_loss_score", "explained_variance", "l0"})


def test_sparse_probing(sae, lm, hooked, artifacts):
    result = run_toy("sparse_probing", sae, lm, hooked, artifacts,
                     settings={"dataset_names": ["LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2"]})
    assert_ok_and_finite(result, {"llm_test_accuracy", "sae_test_accuracy", "sae_top_1_test_accuracy",
                                  "sae_top_5_test_accuracy", "llm_top_1_test_accuracy"})
    assert all(0.0 <= v <= 1.0 for v in result.headline_dict().values())
    assert {d["dataset_name"] for d in result.raw["eval_result_details"]} == {
        "LabHC/bias_in_bios_class_set1_results", "LabHC/bias_in_bios_class_set2_results"}


SAE_PROBES_FAST = ["901_toy_bio_isfemale", "904_toy_doc_isspelling"]


def test_sparse_probing_sae_probes(sae, lm, hooked, artifacts):
    """SAEBench's sae-probes variant on the toy stand-ins (two of the four balanced toy tasks here; all
    four in the slow test below): activations written with the given model (sae-probes never loads one
    by name), tokenizer and sae-probes' data path put back afterwards, the family's rows in the
    metrics table."""
    import sae_probes.utils_data as utils_data

    from sae_core.metrics.rows import metric_rows

    data_path, sides = utils_data.DATA_PATH, (hooked.tokenizer.padding_side, hooked.tokenizer.truncation_side)
    result = run_toy("sparse_probing_sae_probes", sae, lm, hooked, artifacts,
                     settings={"dataset_names": SAE_PROBES_FAST, "ks": [1, 5]})
    assert_ok_and_finite(result, {"llm_test_accuracy", "llm_test_auc", "sae_top_1_test_accuracy", "sae_top_5_test_accuracy",
                                  "sae_top_5_test_auc"})
    assert all(0.0 <= v <= 1.0 for v in result.headline_dict().values())
    assert result.headline_dict()["llm_test_accuracy"] > 0.8  # the toy model's residual stream separates the toy tasks
    assert {d["dataset_name"] for d in result.raw["eval_result_details"]} == set(SAE_PROBES_FAST)
    assert result.raw["sae_lens_release_id"] == "custom" and result.raw["eval_type_id"] == "sparse_probing_sae_probes"
    cached = list((Path(artifacts) / "sparse_probing_sae_probes").rglob("model_activations_*/*.pt"))
    assert len(cached) == len(SAE_PROBES_FAST)
    assert utils_data.DATA_PATH == data_path and (hooked.tokenizer.padding_side, hooked.tokenizer.truncation_side) == sides
    variant = {"llm": {"prefix": "models/toy", "base_model": "toy"}, "hook": HOOK, "variant": "original", "sae_prefix": "saes/x"}
    rows = metric_rows(result, variant, result.raw, "exp", run_id="r1", timestamp="t")
    assert set(rows["metric_family"]) == {"sparse_probing_sae_probes"} and (rows["status"] == "ok").all()
    assert {"sae_top_1_test_accuracy", "llm_test_accuracy"} <= set(rows["metric_name"])
    with pytest.raises(ValueError, match="lacks the dataset"):
        run_toy("sparse_probing_sae_probes", sae, lm, hooked, artifacts, settings={"dataset_names": ["5_hist_fig_ismale"]})


@pytest.mark.slow
def test_sparse_probing_sae_probes_full_toy_run_is_repeatable(lm, hooked, tmp_path):
    """The toy profile as the pipeline runs it (every toy task), twice on fresh caches and once more on a
    warm one with another SAE: the same numbers for the same SAE."""
    from sae_core.datasets.standins.sae_probes_data import TOY_DATASETS

    sae = sampled_sae(hooked, seed=3)
    first = run_toy("sparse_probing_sae_probes", sae, lm, hooked, tmp_path / "a")
    assert_ok_and_finite(first, {"llm_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy",
                                 "sae_top_5_test_accuracy"})
    assert first.raw["eval_config"]["dataset_names"] == list(TOY_DATASETS)
    again = run_toy("sparse_probing_sae_probes", sae, lm, hooked, tmp_path / "b")
    assert again.headline_dict() == first.headline_dict()
    other = run_toy("sparse_probing_sae_probes", sampled_sae(hooked, seed=4), lm, hooked, tmp_path / "a")
    assert other.headline_dict()["llm_test_accuracy"] == first.headline_dict()["llm_test_accuracy"]  # same model, same baseline


def test_sae_probes_stand_ins_are_deterministic_and_balanced(tmp_path):
    import pandas as pd

    from sae_core.datasets.standins import sae_probes_data

    first = sae_probes_data.build_toy(tmp_path / "a", seed=0, rows_per_dataset=220)
    again = sae_probes_data.build_toy(tmp_path / "b", seed=0, rows_per_dataset=220)
    other = sae_probes_data.build_toy(tmp_path / "c", seed=1, rows_per_dataset=220)
    files = sorted(p.relative_to(first) for p in first.rglob("*.zst"))
    assert len(files) == 1 + len(sae_probes_data.TOY_DATASETS)
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert any((first / f).read_bytes() != (other / f).read_bytes() for f in files)
    assert sae_probes_data.dataset_names(first) == list(sae_probes_data.TOY_DATASETS)
    for name in sae_probes_data.TOY_DATASETS:
        frame = pd.read_csv(sae_probes_data.dataset_file(first, name), compression="zstd")
        assert list(frame.columns) == ["prompt", "target"] and frame["prompt"].is_unique
        assert frame["target"].value_counts().to_dict() == {0: 110, 1: 110}
    bios = pd.read_csv(sae_probes_data.dataset_file(first, "901_toy_bio_isfemale"), compression="zstd")
    assert all((" She " in text) == bool(label) for text, label in zip(bios["prompt"], bios["target"]))
    real = sae_probes_data.build_real(tmp_path / "r", seed=0, datasets=("5_hist_fig_ismale",), rows_per_dataset=300)
    real_again = sae_probes_data.build_real(tmp_path / "r2", seed=0, datasets=("5_hist_fig_ismale",), rows_per_dataset=300)
    assert (sae_probes_data.dataset_file(real, "5_hist_fig_ismale").read_bytes()
            == sae_probes_data.dataset_file(real_again, "5_hist_fig_ismale").read_bytes())
    assert pd.read_csv(sae_probes_data.dataset_file(real, "5_hist_fig_ismale"), compression="zstd")["target"].value_counts().to_dict() \
        == {0: 150, 1: 150}
    with pytest.raises(ValueError, match="no dataset"):
        sae_probes_data.build_real(tmp_path / "x", seed=0, datasets=("999_nope",))


@pytest.fixture(scope="module")
def scr_with_and_without_memo(sae, lm, hooked, artifacts):
    """SCR on the toy world as shipped (test batches encoded once: sae_core.metrics.encode_memo) and with
    the memo off (SAEBench re-encodes per class x threshold), plus the memo's counts of the first."""
    from sae_core.metrics import encode_memo

    with_memo = run_toy("scr", sae, lm, hooked, artifacts)
    counts = dict(get_metric("scr").last_encode_memo)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(encode_memo.MAX_BYTES_ENV, "0")
        without = run_toy("scr", sae, lm, hooked, artifacts)
    return with_memo, without, counts


def test_scr(scr_with_and_without_memo):
    result = scr_with_and_without_memo[0]
    n_values = get_metric("scr").toy_defaults.n_values
    assert_ok_and_finite(result, {f"scr_metric_threshold_{n}" for n in n_values})
    assert result.raw["eval_type_id"] == "scr"


def test_scr_encode_memo_changes_no_number(scr_with_and_without_memo):
    """The memo hands SAEBench copies of the SAE's own outputs for the same inputs, so SCR's whole output
    is bit-identical with and without it. A memo keyed on the shape alone (not the storage) would serve one
    class's codes for another's and change the accuracies; one that handed out the stored tensor itself
    would have it zeroed in place by the first ablation and change every later threshold."""
    with_memo, without, counts = scr_with_and_without_memo
    assert counts["encode_hits"] > 3 * counts["encode_misses"] > 0, counts  # each batch encoded once, served for the rest
    assert counts["decode_hits"] > 0, counts
    assert get_metric("scr").last_encode_memo["encode_hits"] == 0  # the memo was off in the second run
    volatile = {"eval_id", "datetime_epoch_millis"}
    assert {k: v for k, v in with_memo.raw.items() if k not in volatile} == {k: v for k, v in without.raw.items() if k not in volatile}
    assert with_memo.headline == without.headline


def test_tpp(sae, lm, hooked, artifacts):
    result = run_toy("tpp", sae, lm, hooked, artifacts)
    n_values = get_metric("tpp").toy_defaults.n_values
    assert_ok_and_finite(result, {f"tpp_threshold_{n}_total_metric" for n in n_values})
    assert result.raw["eval_type_id"] == "tpp"


def test_ravel(sae, lm, hooked, artifacts):
    result = run_toy("ravel", sae, lm, hooked, artifacts)
    assert_ok_and_finite(result, {"disentanglement_score", "cause_score", "isolation_score"})
    assert all(0.0 <= v <= 1.0 for v in result.headline_dict().values())
    # the pipeline's HookedTransformer centres the residual stream; RAVEL (on the HF model) must see the same view
    assert result.raw["sae_transfer_residual_view"] == "centered"
    assert all(p.requires_grad for p in lm.hf_model.parameters())  # frozen only during the run


@pytest.fixture(scope="module")
def spelling_lm(facts_world, tmp_path_factory):
    """A 2-layer GPT-2 over the facts world's tokenizer, with a first-letter direction planted in the
    embedding of every alphabetic token (no training; sae_core.datasets.standins.absorption.build_spelling_model)."""
    from transformers import AutoTokenizer

    from sae_core.datasets.standins.absorption import build_spelling_model
    from sae_core.models import load_language_model

    folder = build_spelling_model(AutoTokenizer.from_pretrained(facts_world), tmp_path_factory.mktemp("spelling_model"))
    return load_language_model(folder)


def test_absorption_prechecks_name_missing_letters_and_split_tokens(lm):
    from sae_core.metrics.absorption import letters_missing_from_train_split, prompt_layout_problems

    missing = letters_missing_from_train_split([" apple", " bread"], seed=42)  # 80% of 2 words = 1 word
    assert len(missing) == 25 and set("cdefghijklmnopqrstuvwxyz") <= set(missing)
    words = [f" {c}{c}" for c in "abcdefghijklmnopqrstuvwxyz" for _ in range(8)]
    assert letters_missing_from_train_split(words, seed=42) == []
    assert prompt_layout_problems(lm.tokenizer, "{word} has the first letter:", -6) == []
    assert "needs 6" in prompt_layout_problems(lm.tokenizer, "{word} has the first letter:", -7)[0]


def facts_world_like(loaded) -> Path:
    """An untrained twin of the spelling model (same tokenizer and shape, no planted letters)."""
    from transformers import GPT2LMHeadModel

    folder = Path(loaded.name).parent / "untrained_twin"
    if not (folder / "config.json").exists():
        torch.manual_seed(1)
        GPT2LMHeadModel(loaded.hf_model.config).save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
    return folder


def test_absorption(spelling_lm, artifacts):
    hooked_model = spelling_lm.hooked()
    sae = sampled_sae(hooked_model, d_sae=256, seed=1)
    spec = get_metric("absorption")
    # SAEBench's own word list (the vocabulary's alphabetic tokens): absorption needs no dataset.
    result = run_metric("absorption", sae, hooked_model, spelling_lm.hf_model, spelling_lm.tokenizer,
                        settings=spec.toy_defaults, profile="hub", artifacts_dir=artifacts)
    assert_ok_and_finite(result, {"mean_absorption_fraction_score", "mean_full_absorption_score",
                                  "mean_num_split_features"})
    values = result.headline_dict()
    assert 0.0 <= values["mean_absorption_fraction_score"] <= 1.0
    assert values["n_letters_evaluated"] >= 2
    assert result.raw["eval_type_id"] == "absorption_first_letter"


def test_absorption_is_skipped_with_a_reason_where_saebench_cannot_run(sae, lm, hooked, artifacts, spelling_lm):
    # SAEBench's 10-example prompts don't fit the facts model's 64-token context (it would silently truncate).
    result = run_toy("absorption", sae, lm, hooked, artifacts)
    assert result.status == "skipped" and result.headline == [] and "context of 64" in result.reason
    # A model without first-letter knowledge: SAEBench's run_eval would stop ("insufficient features"); we say why.
    from sae_core.models import load_language_model

    plain = load_language_model(str(facts_world_like(spelling_lm)))
    result = run_metric("absorption", sampled_sae(plain.hooked(), seed=2), plain.hooked(), plain.hf_model, plain.tokenizer,
                        settings=get_metric("absorption").toy_defaults, artifacts_dir=artifacts)
    assert result.status == "skipped" and "ground-truth probe F1" in result.reason


# --------------------------------------------------------------------------- autointerp
def test_autointerp_is_skipped_without_a_judge(sae, lm, hooked, artifacts, monkeypatch):
    from sae_core.metrics.autointerp import ENV_API_KEY

    monkeypatch.delenv(ENV_API_KEY, raising=False)
    result = run_toy("autointerp", sae, lm, hooked, artifacts)
    assert result.status == "skipped" and ENV_API_KEY in result.reason and result.headline == []
    assert flatten_result(result) == []


def test_autointerp_runs_against_an_openai_compatible_judge(sae, lm, hooked, artifacts, monkeypatch):
    import sae_bench.evals.autointerp.main as ai_main

    from sae_core.metrics.autointerp import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL

    seen = []

    class FakeOpenAI:  # the judge: constructed by SAEBench, with our base_url added
        def __init__(self, api_key, base_url=None):
            seen.append((api_key, base_url))
            self.chat = self
            self.completions = self

        def create(self, model, messages, n, max_tokens, stream):
            seen.append(model)
            is_scoring = "Explanation" in messages[-1]["content"] or "explanation" in messages[-1]["content"]
            text = "1, 2" if is_scoring else "This neuron activates on city names."
            choice = type("Choice", (), {"message": type("Message", (), {"content": text})()})()
            return type("Result", (), {"choices": [choice] * n})()

    monkeypatch.setattr(ai_main, "OpenAI", FakeOpenAI)
    monkeypatch.setenv(ENV_API_KEY, "test-key")
    monkeypatch.setenv(ENV_BASE_URL, "http://127.0.0.1:9/v1")
    monkeypatch.setenv(ENV_MODEL, "judge-model")
    result = run_toy("autointerp", sae, lm, hooked, artifacts)
    assert_ok_and_finite(result, {"autointerp_score"})
    assert ("test-key", "http://127.0.0.1:9/v1") in seen and "judge-model" in seen
    assert ai_main.OpenAI is FakeOpenAI  # our wrapper is gone again


# --------------------------------------------------------------------------- registry, flatten, hygiene
def test_unknown_metric_names_are_a_clear_error():
    with pytest.raises(ValueError, match="unknown metric 'corre'.*core, absorption, scr, tpp, sparse_probing, ravel"):
        get_metric("corre")
    with pytest.raises(ValueError, match="known metrics"):
        run_metric("nope", None, None, None, None)
    assert set(METRIC_NAMES) == {"core", "absorption", "scr", "tpp", "sparse_probing", "ravel", "autointerp",
                                 "sparse_probing_sae_probes"}


def test_settings_presets_and_overrides():
    from pydantic import ValidationError

    hub = settings_for("core", "hub")
    assert (hub["context_size"], hub["batch_size_prompts"], hub["n_eval_reconstruction_batches"],
            hub["n_eval_sparsity_variance_batches"], hub["exclude_special_tokens_from_reconstruction"]) == (128, 16, 200, 2000, True)
    assert settings_for("core", "toy", {"context_size": 32})["context_size"] == 32
    assert settings_for("sparse_probing", "hub")["dataset_names"][0] == "LabHC/bias_in_bios_class_set1"
    with pytest.raises(ValidationError):
        settings_for("core", "toy", {"no_such_setting": 1})
    with pytest.raises(ValueError, match="profile"):
        get_metric("core").defaults("medium")
    for name in METRIC_NAMES:  # every preset is a valid, JSON-able settings object
        spec = get_metric(name)
        for preset in ("toy", "hub"):
            assert spec.settings_cls(**json.loads(json.dumps(settings_for(name, preset)))) == spec.defaults(preset)


def test_flatten_gives_tidy_typed_rows():
    ok = MetricResult(metric="core", status="ok", raw={}, headline=[
        {"metric_name": "ce_loss_score", "value": 0.9, "higher_is_better": True},
        {"metric_name": "l0", "value": 8, "higher_is_better": None},
        {"metric_name": "mse", "value": 0.1, "higher_is_better": False}])
    skipped = MetricResult.skipped("autointerp", "no judge")
    rows = flatten_result(ok)
    assert [tuple(r) for r in rows] == [COLUMNS] * 3
    assert rows[1] == {"metric_family": "core", "metric_name": "l0", "value": 8.0, "higher_is_better": None}
    frame = results_frame([ok, skipped])
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 3
    assert str(frame["value"].dtype) == "float64" and str(frame["higher_is_better"].dtype) == "boolean"
    assert frame["higher_is_better"].isna().tolist() == [False, True, False]
    assert sae_bench_version() == "0.6.0"
    with pytest.raises(ValueError):
        MetricResult(metric="core", status="ok", raw={}, headline=[{"metric_name": "x", "value": 1.0}])


def test_adapters_leave_caller_objects_and_global_state_alone(sae, lm, hooked, artifacts):
    import jaxtyping

    sae_state = {k: v.clone() for k, v in sae.state_dict().items()}
    sae_cfg = json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str)
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    grad_before = torch.is_grad_enabled()
    run_toy("core", sae, lm, hooked, artifacts, settings={"n_eval_reconstruction_batches": 1,
                                                          "n_eval_sparsity_variance_batches": 1})
    assert torch.rand(1) == expected_draw  # RNG state restored
    assert torch.is_grad_enabled() == grad_before and not jaxtyping.config.jaxtyping_disable
    assert all(torch.equal(sae_state[k], v) for k, v in sae.state_dict().items())
    assert json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str) == sae_cfg


def test_cache_keys_separate_pruned_from_dense_models(lm):
    import copy

    from sae_core.metrics.base import model_fingerprint

    pruned = copy.deepcopy(lm.hf_model)
    with torch.no_grad():
        pruned.transformer.h[0].mlp.c_fc.weight[:, :8] = 0.0
    assert model_fingerprint(lm.hf_model) == model_fingerprint(copy.deepcopy(lm.hf_model))
    assert model_fingerprint(pruned) != model_fingerprint(lm.hf_model)


def test_ravel_layer_adapter_handles_tensor_and_tuple_outputs():
    from sae_core.metrics.ravel import TupleOutputLayer

    class Tensorish(torch.nn.Module):
        def forward(self, x):
            return x * 2

    class Tupleish(torch.nn.Module):
        def forward(self, x):
            return (x * 2, "cache")

    x = torch.arange(6.0).reshape(1, 2, 3)
    for module, unwrap in ((Tensorish(), lambda y: y), (Tupleish(), lambda y: y[0])):
        seen = {}

        def saebench_hook(mod, inputs, outputs):  # what SAEBench's RAVEL hooks do
            assert isinstance(outputs, tuple)
            seen["acts"] = outputs[0].clone()
            resid = outputs[0]
            resid[:, 0, :] = 0.0
            return (resid, *outputs[1:])

        handle = TupleOutputLayer(module, center=True).register_forward_hook(saebench_hook)
        out = unwrap(module(x))
        handle.remove()
        y = x * 2
        assert torch.allclose(seen["acts"], y - y.mean(-1, keepdim=True))  # centred view
        assert torch.allclose(out[:, 1], y[:, 1])  # untouched positions unchanged (mean added back)
        assert torch.allclose(out[:, 0], y[:, 0].mean(-1, keepdim=True).expand(-1, 3))


def test_saebench_draws_from_random_are_private_to_the_eval():
    """SAEBench draws from the process-wide ``random``; Prefect's threads draw from it too. Inside
    ``sae_bench_context(seed)`` SAEBench's modules share one private generator, so a foreign draw in
    between (below: ``random.random()``) no longer shifts absorption's vocabulary split and in-context
    examples. Without the swap (the global generator seeded instead) the same foreign draw shifts them."""
    import threading

    from sae_bench.evals.absorption import probing, prompting
    from sae_bench.sae_bench_utils import dataset_utils

    from sae_core.metrics.base import sae_bench_context

    expected = random.Random(42)
    expected = [expected.sample(range(100), 5) for _ in range(3)]
    with sae_bench_context(42):
        foreign = threading.Thread(target=lambda: [random.random() for _ in range(10)])
        foreign.start()
        foreign.join()
        draws = [probing.random.sample(range(100), 5), prompting.random.sample(range(100), 5),
                 dataset_utils.random.sample(range(100), 5)]
        assert probing.random is prompting.random is dataset_utils.random is not random
    assert draws == expected
    assert probing.random is random and prompting.random is random and dataset_utils.random is random

    random.seed(42)
    random.random()  # the foreign draw, against the shared global generator
    assert random.sample(range(100), 5) != expected[0]


def test_one_row_builder_serves_every_family():
    """SAEBench results and the feature audit's outcomes go through the same builder (sae_core.metrics.rows)."""
    from types import SimpleNamespace

    from sae_core.metrics.rows import METRIC_COLUMNS, headline_rows, metric_rows

    variant = {"llm": {"prefix": "compressed_models/x", "compression": {"spec": "rtn:4", "strength": 4.0}, "base_model": "toy"},
               "hook": "blocks.1.hook_resid_post", "variant": "pruned", "rule": "wanda", "sparsity": 0.5, "sae_prefix": "saes/pruned/y"}
    ok = MetricResult(metric="core", status="ok", raw={}, headline=[{"metric_name": "mse", "value": 0.5, "higher_is_better": False}])
    rows = metric_rows(ok, variant, {"a": 1}, "exp", run_id="r1", timestamp="t")
    assert list(rows.columns) == list(METRIC_COLUMNS) and len(rows) == 1
    assert rows.iloc[0][["compression", "strength", "layer", "sae_variant", "metric_name", "value", "run_id"]].tolist() == \
        ["rtn:4", 4.0, 1, "pruned", "mse", 0.5, "r1"]
    assert headline_rows(ok) == [{"metric_family": "core", "metric_name": "mse", "value": 0.5, "higher_is_better": False}]
    skipped = metric_rows(MetricResult.skipped("ravel", "too few prompts"), variant, {}, "exp", run_id="r1")
    assert skipped.iloc[0][["status", "reason", "metric_name"]].tolist() == ["skipped", "too few prompts", "skipped"]
    outcome = SimpleNamespace(metric="feature_fidelity", status="ok", reason="",
                              headline=[{"metric_name": "survived_pct", "value": 90.0, "higher_is_better": True}])
    assert metric_rows(outcome, variant, {}, "exp", run_id="r1").iloc[0]["metric_family"] == "feature_fidelity"


def test_a_new_family_is_one_subclass_and_one_registry_entry(tmp_path, monkeypatch):
    """Adding a family (sae_core.metrics docstring): a ``MetricFamily`` subclass with its name, settings
    class, defaults per profile and ``run``, registered in ``registry.FAMILIES``; ``run_metric`` builds its
    inputs, resolves its settings and times it, and ``metric_rows`` gives its tidy rows."""
    from sae_core.metrics import registry
    from sae_core.metrics.base import MetricFamily, MetricInputs, MetricSettings, headline
    from sae_core.metrics.rows import METRIC_COLUMNS, metric_rows

    class FakeSettings(MetricSettings):
        scale: float = 2.0

    seen = {}

    class Fake(MetricFamily):
        name = "fake"
        settings_cls = FakeSettings
        toy_defaults = FakeSettings(scale=0.5)
        hub_defaults = FakeSettings()

        def run(self, inputs: MetricInputs, config: FakeSettings):
            seen.update(inputs=inputs, config=config)
            if inputs.sae is None:
                return self.skipped("no SAE")
            return self.result({"scale": config.scale}, [headline("scaled", config.scale * inputs.sae, True),
                                                         headline("width", 3, None)])

    families = (*registry.FAMILIES, Fake(real_overrides={"scale": 4.0}))
    monkeypatch.setattr(registry, "FAMILIES", families)
    monkeypatch.setattr(registry, "METRICS", {family.name: family for family in families})

    result = run_metric("fake", sae=10.0, hooked_model=None, hf_model=None, tokenizer=None, settings={"scale": 3.0},
                        profile="hub", artifacts_dir=tmp_path, device="cpu", seed=0)
    assert result.status == "ok" and result.metric == "fake" and result.seconds is not None
    assert result.headline_dict() == {"scaled": 30.0, "width": 3.0}
    inputs = seen["inputs"]
    assert isinstance(inputs, MetricInputs) and inputs.sae == 10.0 and inputs.artifacts_dir == tmp_path
    assert inputs.scratch_dir is not None and inputs.model_name == "model"  # a temporary folder; no model: "model"
    assert seen["config"] == FakeSettings(scale=3.0)
    assert registry.settings_for("fake", "real") == {"scale": 4.0}

    variant = {"llm": {"prefix": "models/toy", "base_model": "toy"}, "hook": HOOK, "variant": "base", "sae_prefix": "saes/base/x"}
    rows = metric_rows(result, variant, result.raw, "exp", run_id="r1", timestamp="t")
    assert list(rows.columns) == list(METRIC_COLUMNS)
    assert rows[["metric_family", "metric_name", "value", "status", "layer"]].values.tolist() == [
        ["fake", "scaled", 30.0, "ok", 1], ["fake", "width", 3.0, "ok", 1]]
    assert rows["higher_is_better"].iloc[0] == True and rows["higher_is_better"].isna().iloc[1]  # noqa: E712 (nullable bool)

    skipped = run_metric("fake", None, None, None, None, artifacts_dir=tmp_path)
    assert (skipped.status, skipped.reason, skipped.raw) == ("skipped", "no SAE", {})
    assert metric_rows(skipped, variant, {}, "exp", run_id="r1").iloc[0][["status", "reason"]].tolist() == ["skipped", "no SAE"]
