"""Measure what makes two runs of the same command and seed differ (docs/reproducibility.md).

On a small toy world (the tests' ``TEST_TOY_WORLD``, built once under ``--world``), one child process:

1. caches activations twice (a forward pass, same tokens) and compares them bit for bit;
2. trains a TopK SAE with ``sae_core.sae_train.train_sae`` three times: plainly, again, and with a
   *foreign thread* drawing from the process-wide torch generator the whole time (what a Prefect
   worker thread that draws while another task trains would do);
3. trains once more with 1 vs 2 intra-op threads (the size of the thread-count effect);
4. runs each SAEBench family (toy profile) twice on the same SAE, with the process-wide torch /
   numpy state set differently before each run (what the tasks that ran before leave behind).

The parent runs that child twice with different ``PYTHONHASHSEED`` (Python's per-process string-hash
salt, which orders sets of strings) and compares the two children too. Prints one JSON report.

    .venv/bin/python benchmarks/bench_reproducibility.py --world /tmp/repro/world
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import QUIET_ENV, RESULT_TAG  # noqa: E402

HOOK = "blocks.1.hook_resid_post"
FAMILIES = ("core", "sparse_probing", "scr", "tpp", "ravel")


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def child(world: Path, families: list[str]) -> dict:
    import numpy as np
    import torch

    from tests.conftest import TEST_TOY_WORLD
    from sae_core.metrics import run_metric
    from sae_core.models import load_language_model
    from sae_core.sae_io import new_sae
    from sae_core.sae_train import train_sae
    from sae_core.toy.corpus import generate_corpus
    from sae_core.toy.world import ToyWorldConfig, build_toy_world

    torch.set_num_threads(1)
    if not (world / "model").exists():
        build_toy_world(world, ToyWorldConfig(**TEST_TOY_WORLD), progress=False)
    lm = load_language_model(str(world / "model"))
    hooked = lm.hooked()
    texts = [doc.text for doc in generate_corpus(160, seed=5)]
    tokens = hooked.to_tokens(texts)[:, :64]
    out: dict = {}

    def acts():
        with torch.no_grad():
            _, cache = hooked.run_with_cache(tokens, names_filter=[HOOK])
        return cache[HOOK].reshape(-1, hooked.cfg.d_model).clone()

    a1, a2 = acts(), acts()
    out["activations_bit_identical"] = bool(torch.equal(a1, a2))
    torch.set_num_threads(2)
    a3 = acts()
    torch.set_num_threads(1)
    out["activations_two_threads_max_abs_diff"] = float((a3 - a1).abs().max())
    out["activations_digest"] = _digest([a1])
    batches = list(a1.split(512))

    def train(threads: int = 1, foreign: bool = False, data=None):
        torch.set_num_threads(threads)
        stop = threading.Event()
        drawer = threading.Thread(target=lambda: [torch.rand(64) for _ in iter(lambda: stop.is_set(), True)])
        if foreign:
            drawer.start()
        try:
            blank = new_sae("topk", hooked.cfg.d_model, 128, HOOK, k=8, seed=0)
            sae, report = train_sae(blank, data or batches, 16 * 256, lr=3e-3, batch_size=256, seed=0, progress=False,
                                    shuffle_buffer_batches=4)
        finally:
            stop.set()
            if foreign:
                drawer.join()
            torch.set_num_threads(1)
        return sae, report

    # the same activations up to float rounding (relative 1e-7, the size of a changed summation order)
    noise = torch.randn(a1.shape, generator=torch.Generator().manual_seed(1))
    rounded = list((a1 * (1 + 1e-7 * noise)).split(512))
    runs = {"plain": train(), "again": train(), "foreign_thread": train(foreign=True), "two_threads": train(threads=2),
            "activations_rounded_differently": train(data=rounded)}
    ref = runs["plain"][0]
    out["training"] = {}
    for name, (sae, report) in runs.items():
        diff = max(float((getattr(sae, p) - getattr(ref, p)).abs().max()) for p in ("W_enc", "W_dec", "b_enc", "b_dec"))
        out["training"][name] = {"digest": _digest([sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec]), "max_abs_weight_diff": diff,
                                 "dead_latents": report["dead_latents"], "final_ev": report["final_explained_variance"]}
    sae = ref
    out["metrics"] = {}
    artifacts = world.parent / f"artifacts-{os.getpid()}"
    for family in families:
        values = []
        for state in (1, 2):
            torch.manual_seed(state)
            np.random.seed(state)
            result = run_metric(family, sae, hooked, lm.hf_model, lm.tokenizer, profile="toy", artifacts_dir=artifacts)
            values.append({"status": result.status, "reason": result.reason, **result.headline_dict()})
        out["metrics"][family] = values
    return out


def compare(a: dict, b: dict) -> dict[str, float]:
    """Largest |difference| per metric between two headline dicts (status and reason compared as text)."""
    diffs = {}
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, float) and isinstance(y, float):
            diffs[key] = abs(x - y) if x == x or y == y else 0.0
        elif x != y:
            diffs[key] = float("inf")
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("/tmp/sae-transfer-repro/world"))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    if args.child:
        print(RESULT_TAG + json.dumps(child(args.world, families)))
        return
    children = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, **QUIET_ENV, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, __file__, "--child", "--world", str(args.world), "--families", ",".join(families)],
                              env=env, capture_output=True, text=True, check=True)
        line = next(line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG))
        children.append(json.loads(line[len(RESULT_TAG):]))
    first, second = children
    report = {
        "activations_bit_identical_in_process": first["activations_bit_identical"],
        "activations_two_threads_max_abs_diff": first["activations_two_threads_max_abs_diff"],
        "activations_identical_across_processes": first["activations_digest"] == second["activations_digest"],
        "training": first["training"],
        "training_identical_across_processes": first["training"]["plain"]["digest"] == second["training"]["plain"]["digest"],
        "metrics_global_state_1_vs_2": {f: compare(*first["metrics"][f]) for f in families},
        "metrics_across_processes": {f: compare(first["metrics"][f][0], second["metrics"][f][0]) for f in families},
        "metrics_values": {f: first["metrics"][f][0] for f in families},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
