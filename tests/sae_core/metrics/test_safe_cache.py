"""SAEBench's LLM-side caches kept across runs in safe formats (sae_core.metrics.safe_cache).

How a wrong variant would be caught:
* a second run that recomputed (a key with a run-dependent part, e.g. the stand-ins' paths) would run
  the model and train LLM probes: both are counted and must be zero;
* a cache that changed a number on the way (a cast, a lost ``requires_grad``, a probe rebuilt in the
  wrong mode) makes the second run's SAEBench output differ from the first's: compared exactly;
* a pickle anywhere in the cache: every file must be safetensors or JSON, and the second run runs
  with ``pickle.load`` / ``pickle.loads`` / ``torch.load`` raising;
* a key without the weights: a changed model would be served the first model's activations -- it
  must get a new entry and run the model;
* trusting a truncated file: the entry is deleted and recomputed (the model runs again, same numbers).
"""

from __future__ import annotations

import copy
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_core.metrics import run_metric, safe_cache
from sae_core.metrics.base import model_fingerprint
from sae_core.metrics.registry import get_metric

HOOK = "blocks.1.hook_resid_post"
VOLATILE = {"eval_id", "datetime_epoch_millis"}
SETTINGS = {
    "sparse_probing": {"dataset_names": ["LabHC/bias_in_bios_class_set1"]},
    "tpp": {},
    "scr": {},
}


@pytest.fixture(scope="module")
def hooked(toy_model):
    return toy_model.hooked()


@pytest.fixture(scope="module")
def sae(hooked):
    from sae_core.sae_io import new_sae

    return new_sae("topk", hooked.cfg.d_model, 4 * hooked.cfg.d_model, HOOK, k=8, seed=0)


class Counted:
    """Counts the model's forward passes and the LLM probes SAEBench trains (probes on d_model-wide inputs)."""

    def __init__(self, model, d_model: int) -> None:
        import sae_bench.evals.sparse_probing.probe_training as probe_training

        self.forwards = self.llm_probes = 0
        self._model, self._probe_training = model, probe_training
        self._forward, self._train = model.forward, probe_training.train_probe_on_activations
        self.d_model = d_model

    def __enter__(self) -> "Counted":
        def forward(*args, **kwargs):
            self.forwards += 1
            return self._forward(*args, **kwargs)

        def train(train_acts, *args, **kwargs):
            if next(iter(train_acts.values())).shape[-1] == self.d_model:
                self.llm_probes += 1
            return self._train(train_acts, *args, **kwargs)

        self._model.forward = forward
        self._probe_training.train_probe_on_activations = train
        return self

    def __exit__(self, *exc) -> None:
        del self._model.forward
        self._probe_training.train_probe_on_activations = self._train


def run(name, sae, model, toy_model, artifacts: Path, llm_cache: Path):
    with Counted(model, model.cfg.d_model) as counted:
        started = time.perf_counter()
        result = run_metric(name, sae, model, toy_model.hf_model, toy_model.tokenizer, settings=SETTINGS[name],
                            profile="toy", artifacts_dir=artifacts, llm_cache_dir=llm_cache)
        seconds = time.perf_counter() - started
    assert result.status == "ok", result.reason
    return result, counted, get_metric(name).last_llm_cache, seconds


def comparable(result):
    return {k: v for k, v in result.raw.items() if k not in VOLATILE}, result.headline


@pytest.fixture(scope="module", params=["tpp", "scr", "sparse_probing"])
def two_runs(request, sae, hooked, toy_model, tmp_path_factory):
    """The family in a first run (cold cache), then in a second "run" (fresh run folder, so freshly built
    stand-in datasets; the same LLM cache) with every unpickling entry point raising."""
    name = request.param
    root = tmp_path_factory.mktemp(f"safe_cache_{name}")
    first = run(name, sae, hooked, toy_model, root / "run1", root / "llm")

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled during the warm run")

    with pytest.MonkeyPatch.context() as patch:
        for target, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
            patch.setattr(target, attr, refuse)
        second = run(name, sae, hooked, toy_model, root / "run2", root / "llm")
    return name, root, first, second


def test_second_run_reads_the_safe_cache_and_gives_identical_output(two_runs):
    name, root, (r1, c1, cache1, s1), (r2, c2, cache2, s2) = two_runs
    assert cache1.status == "cold" and c1.forwards > 0 and c1.llm_probes > 0
    assert cache2.status == "warm", cache2.problem
    assert c2.forwards == 0 and c2.llm_probes == 0  # no LLM forward, no LLM probe trained
    assert comparable(r1) == comparable(r2)
    print(f"{name}: first run {s1:.2f} s (cold LLM cache), second {s2:.2f} s (warm)")


def test_nothing_in_the_cache_is_a_pickle(two_runs):
    name, root, *_ = two_runs
    entries = list((root / "llm" / name).glob(f"*/{safe_cache.ENTRY}"))
    assert len(entries) == 1
    files = [p for p in entries[0].rglob("*") if p.is_file()]
    assert any(p.name.endswith(".pt") for p in files), files  # SAEBench's own file names ...
    formats = {p.name: safe_cache.file_format(p) for p in files}
    assert set(formats.values()) <= {"safetensors", "json"}, formats  # ... holding safetensors, never a pickle
    for path in files:
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", path  # no pickle protocol header, no torch zip archive
    if name in ("tpp", "scr"):  # the LLM probes, once pickle.dump'ed: state_dict tensors + constructor arguments
        probes = [p for p in files if p.name.endswith("_probes.pkl")]
        loaded = safe_cache.loads(probes[0].read_bytes())
        probe = next(iter(loaded["llm_probes"].values()))
        assert type(probe).__name__ == "Probe" and probe.net.weight.requires_grad
    assert (entries[0] / safe_cache.MANIFEST).exists()  # committed


def test_changed_weights_get_a_new_entry(two_runs, hooked, sae, toy_model, tmp_path):
    name, root, (r1, *_), _ = two_runs
    changed = copy.deepcopy(hooked)
    with torch.no_grad():
        changed.blocks[0].mlp.W_in[:, :4] = 0.0
    result, counted, cache, _ = run(name, sae, changed, toy_model, tmp_path / "run3", root / "llm")
    assert cache.status == "cold" and counted.forwards > 0  # nothing reused
    assert len(list((root / "llm" / name).glob(f"*/{safe_cache.ENTRY}"))) == 2


def test_a_truncated_cache_file_is_recomputed(two_runs, hooked, sae, toy_model, tmp_path):
    name, root, (r1, *_), _ = two_runs
    (entry,) = [e for e in (root / "llm" / name).glob(f"*/{safe_cache.ENTRY}")
                if json.loads((e / safe_cache.MANIFEST).read_text())["key"]["model_fingerprint"] == model_fingerprint(hooked)]
    victim = next(p for p in entry.rglob("*.pt"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    result, counted, cache, _ = run(name, sae, hooked, toy_model, tmp_path / "run4", root / "llm")
    assert cache.status == "recomputed" and "size differs" in cache.problem and counted.forwards > 0
    assert comparable(result) == comparable(r1)
    again, counted, cache, _ = run(name, sae, hooked, toy_model, tmp_path / "run5", root / "llm")
    assert cache.status == "warm" and counted.forwards == 0 and comparable(again) == comparable(r1)


# --------------------------------------------------------------------------- the format itself
def test_round_trip_keeps_types_values_and_probe_state():
    from sae_bench.evals.sparse_probing.probe_training import Probe

    probe = Probe(5, torch.float32)
    probe.eval()
    view = torch.arange(12.0).reshape(3, 4)
    obj = {"train": {"a": torch.randn(2, 3, dtype=torch.bfloat16), 0: view, "b": view[1:]},
           "acc": {"x": 0.1 + 0.2, "y": np.float32(0.3), "z": np.float64(1 / 3), "n": float("nan")},
           "probes": {"p": probe}, "misc": [1, True, None, "s", (2, 3)], "dtype": torch.bfloat16}
    back = safe_cache.loads(safe_cache.dumps(obj))
    assert torch.equal(back["train"]["a"], obj["train"]["a"]) and back["train"]["a"].dtype == torch.bfloat16
    assert torch.equal(back["train"][0], view) and torch.equal(back["train"]["b"], view[1:])
    assert back["acc"]["x"] == obj["acc"]["x"] and type(back["acc"]["y"]) is np.float32 and back["acc"]["y"] == obj["acc"]["y"]
    assert type(back["acc"]["z"]) is np.float64 and np.isnan(back["acc"]["n"])
    assert back["misc"] == [1, True, None, "s", (2, 3)] and back["dtype"] is torch.bfloat16
    rebuilt = back["probes"]["p"]
    assert type(rebuilt) is Probe and not rebuilt.training and rebuilt.net.weight.requires_grad
    assert all(torch.equal(v, probe.state_dict()[k]) for k, v in rebuilt.state_dict().items())


def test_what_cannot_be_made_safe_is_refused_and_pickles_are_never_read(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        safe_cache.dumps({"f": lambda: 0})
    with pytest.raises(TypeError, match="cannot store the module"):
        safe_cache.dumps(torch.nn.Linear(2, 2))
    path = tmp_path / "real.pt"
    torch.save({"x": torch.ones(1)}, path)
    with pytest.raises(safe_cache.NotSafeCacheFile):
        safe_cache.SafeTorch(torch).load(path)
    with pytest.raises(safe_cache.NotSafeCacheFile):
        safe_cache.loads(pickle.dumps({"x": 1}))


# --------------------------------------------------------------------------- absorption and RAVEL
from tests.sae_core.metrics.test_families import facts_world, lm, sampled_sae, spelling_lm  # noqa: E402,F401 (fixtures)


def test_absorption_and_ravel_reuse_their_llm_side_across_runs(spelling_lm, lm, tmp_path):
    """Absorption's first-letter probe (once ``torch.save`` of the module, read with ``weights_only=False``)
    and RAVEL's filtered prompt set: a second run reads them from the safe cache, with the same output."""
    from sae_core.metrics.registry import get_metric

    spelling = spelling_lm.hooked()
    facts = lm.hooked()
    cases = [("absorption", spelling_lm, spelling, sampled_sae(spelling, d_sae=256, seed=1),
              dict(settings=get_metric("absorption").toy_defaults, profile="hub")),
             ("ravel", lm, facts, sampled_sae(facts), dict(profile="toy"))]
    for name, loaded, model, sae_, kwargs in cases:
        outputs, statuses = [], []
        for i, patched in enumerate((False, True)):
            with pytest.MonkeyPatch.context() as patch:
                if patched:
                    for target, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
                        patch.setattr(target, attr, lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
                result = run_metric(name, sae_, model, loaded.hf_model, loaded.tokenizer, artifacts_dir=tmp_path / f"{name}{i}",
                                    llm_cache_dir=tmp_path / "llm", **kwargs)
            assert result.status == "ok", result.reason
            outputs.append(comparable(result))
            statuses.append(get_metric(name).last_llm_cache.status)
        assert statuses == ["cold", "warm"] and outputs[0] == outputs[1], name
        (entry,) = (tmp_path / "llm" / name).glob(f"*/{safe_cache.ENTRY}")
        formats = {p.name: safe_cache.file_format(p) for p in entry.rglob("*") if p.is_file()}
        assert set(formats.values()) <= set(safe_cache.SAFE_FORMATS), formats
        if name == "absorption":
            assert formats["probe.pth"] == "safetensors"


def test_an_entry_is_committed_only_whole_and_only_in_safe_formats(tmp_path):
    key = {"k": 1}
    with pytest.raises(RuntimeError), safe_cache.LlmCache(tmp_path, key) as folder:
        safe_cache.SafeTorch(torch).save({"x": torch.ones(2)}, folder / "a.pt")
        raise RuntimeError("SAEBench failed half-way")
    assert not (tmp_path / safe_cache.ENTRY).exists()  # nothing half-written is kept
    (tmp_path / safe_cache.ENTRY).mkdir()
    (tmp_path / safe_cache.ENTRY / "a.pt").write_bytes(b"half")  # a crashed process's folder: no manifest
    cache = safe_cache.LlmCache(tmp_path, key)
    with cache as folder:
        assert not (folder / "a.pt").exists()
        safe_cache.SafeTorch(torch).save({"x": torch.ones(2)}, folder / "a.pt")
    assert cache.status == "recomputed" and "no manifest" in cache.problem
    with safe_cache.LlmCache(tmp_path, key) as folder:
        assert torch.equal(safe_cache.SafeTorch(torch).load(folder / "a.pt")["x"], torch.ones(2))
    other = safe_cache.LlmCache(tmp_path / "other", key)
    with other as folder:
        torch.save({"x": 1}, folder / "b.pt")  # a real pickle (a SAEBench path not made safe)
    assert other.status == "not_kept" and not (tmp_path / "other" / safe_cache.ENTRY).exists()
    changed = safe_cache.LlmCache(tmp_path, {"k": 2})  # same folder, another key: not trusted
    with changed:
        pass
    assert changed.status == "recomputed" and "key" in changed.problem


def test_a_file_naming_another_class_is_refused_not_imported():
    """The structure in a file says which class to rebuild: only the known probe classes are ever built."""
    from safetensors.torch import save

    tree = {"module": "subprocess.Popen", "kwargs": {"dict": [[{"py": "args"}, {"py": ["true"]}]]}, "state": {},
            "training": {}}
    data = save({"t0": torch.ones(1)}, metadata={"sae_transfer_tree": json.dumps(tree), "format": "1"})
    with pytest.raises(safe_cache.NotSafeCacheFile, match="not one the cache rebuilds"):
        safe_cache.loads(data)
    with pytest.raises(safe_cache.NotSafeCacheFile, match="not a torch dtype"):
        safe_cache.loads(save({}, metadata={"sae_transfer_tree": json.dumps({"dtype": "load"}), "format": "1"}))
