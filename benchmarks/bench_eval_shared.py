"""SAEBench core for N SAE variants on one model: without vs with the shared SAE-independent work
(:mod:`sae_core.metrics.shared_work`), in the same process, on the same model and settings.

Without: SAEBench's ``run_evals`` as is, for every variant (token draws, clean + spliced + zero-ablated
forward per reconstruction batch, hook-activation pass per sparsity batch). With: the first variant
records the SAE-independent part (safetensors under the run's cache folder), every further one replays
it and runs only its spliced passes. Printed: where core's time goes for one SAE without sharing (by
forward-pass kind, timed on the real ``HookedTransformer.forward`` and ``ActivationsStore.get_batch_tokens``),
the first variant's cost, the marginal cost of each further variant, the ratios, and whether every
variant's core numbers are identical in both modes (they must be, bit for bit).

Model: the toy world (built in seconds, like the tests' fixture) or ``--model HF_FOLDER`` (e.g. the
dequantized Gemma 3 270M folder under storage ``models/<hash>``) with ``--hook`` and ``--profile real``.
SAE variants: TopK SAEs whose decoder rows are sampled activation directions (one seed each).

Examples:
    .venv/bin/python benchmarks/bench_eval_shared.py --variants 5 --threads 1
    .venv/bin/python benchmarks/bench_eval_shared.py --model PATH --hook blocks.6.hook_resid_post --profile real --variants 3 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

VOLATILE = {"eval_id", "datetime_epoch_millis"}


@contextlib.contextmanager
def timed_passes(model):
    """Seconds spent in the real model's forward passes, by kind, and in the store's token draws."""
    from sae_lens.training.activations_store import ActivationsStore

    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    forward, draw = model.forward, ActivationsStore.get_batch_tokens

    def timed_forward(*args, **kwargs):
        hooks = [hp for hp in model.hook_dict.values() if hp.fwd_hooks]
        kind = "hook_acts" if kwargs.get("stop_at_layer") is not None else ("hooked" if hooks else "clean")
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            seconds[kind] += time.perf_counter() - start
            calls[kind] += 1

    def timed_draw(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return draw(self, *args, **kwargs)
        finally:
            seconds["draws"] += time.perf_counter() - start
            calls["draws"] += 1

    model.forward = timed_forward
    ActivationsStore.get_batch_tokens = timed_draw
    try:
        yield seconds, calls
    finally:
        del model.forward
        ActivationsStore.get_batch_tokens = draw


def build_spelling_model(folder: Path) -> str:
    """The absorption model (as the tests' ``spelling_lm``, tests/sae_core/metrics/test_families.py): the facts
    world's tokenizer (plus the letters " A" ... " Z") under
    :func:`sae_core.datasets.standins.absorption.build_spelling_model`'s planted first letters. No training: seconds."""
    import random

    from sae_core.datasets.standins.absorption import build_spelling_model as planted
    from sae_core.toy.corpus import make_bio, make_city_facts, make_spelling
    from sae_core.toy.world import train_tokenizer

    rng = random.Random(0)
    texts = [make_city_facts(rng).text for _ in range(1500)] + [make_spelling(rng).text for _ in range(200)]
    texts += [make_bio(rng).text for _ in range(300)]
    tokenizer = train_tokenizer(texts + [" ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ")] * 400, 512)
    return planted(tokenizer, folder)


def bench_family(name: str, lm, hooked, saes, settings, profile: str, work: Path) -> dict:
    """``name`` for every SAE of ``saes`` without, then with the shared SAE-independent work
    (``share_model_work`` of the family); returns the timings and whether the outputs are identical."""
    from sae_core.metrics import run_metric
    from sae_core.metrics.registry import METRICS

    family = METRICS[name]
    default = family.share_model_work

    def evaluate(sae, artifacts: Path, share: bool):
        family.share_model_work = share
        start = time.perf_counter()
        result = run_metric(name, sae, hooked, lm.hf_model, lm.tokenizer, settings=settings, profile=profile,
                            artifacts_dir=artifacts, scratch_dir=work / "scratch")
        seconds = time.perf_counter() - start
        assert result.status == "ok", result.reason
        return seconds, json.dumps({"raw": {k: v for k, v in result.raw.items() if k not in VOLATILE},
                                    "headline": result.headline}, sort_keys=True)

    evaluate(saes[0], work / f"warmup-{name}", share=False)
    timings: dict[str, list[float]] = {"without": [], "with": []}
    outputs: dict[str, list] = {"without": [], "with": []}
    try:
        for mode, share in (("without", False), ("with", True)):
            for sae in saes:
                seconds, out = evaluate(sae, work / f"run-{name}-{mode}", share)
                timings[mode].append(seconds)
                outputs[mode].append(out)
    finally:
        family.share_model_work = default
    rows = {mode: (timings[mode][0], statistics.median(timings[mode][1:]) if len(saes) > 1 else float("nan"))
            for mode in timings}
    print(f"\n{name} for {len(saes)} SAE variants (seconds per variant)")
    for mode in ("without", "with"):
        print(f"  {mode:8s} sharing: " + "  ".join(f"{t:.3f}" for t in timings[mode])
              + f"   first {rows[mode][0]:.3f}, marginal {rows[mode][1]:.3f}")
    identical = outputs["without"] == outputs["with"]
    print(f"  last variant's shared work: {getattr(family, 'last_shared_work', None)}")
    print(f"  marginal with/without: {rows['with'][1] / rows['without'][1]:.2f}; identical outputs: {identical}")
    return {"timings": timings, "first": {m: r[0] for m, r in rows.items()},
            "marginal": {m: r[1] for m, r in rows.items()}, "identical": identical}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=5)
    p.add_argument("--model", default=None, help="HF model folder (default: build the toy world)")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--profile", default="toy", choices=["toy", "real"])
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--settings", default="{}", help="JSON overrides of the profile's core settings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--families", default="core,absorption",
                   help="comma-separated: core (the model given or the toy world), absorption (toy spelling model)")
    args = p.parse_args(argv)

    from sae_core.metrics import run_metric
    from sae_core.metrics.registry import METRICS, settings_for
    from sae_core.models import load_language_model

    C.set_threads(args.threads)
    C.print_machine(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-eval-shared-"))
    model_dir = C.model_dir_or_toy_world(args.model, work)
    lm = load_language_model(model_dir)
    hooked = lm.hooked()
    settings = settings_for("core", args.profile, json.loads(args.settings))
    print(f"model {model_dir} hook {args.hook} profile {args.profile}; core settings: "
          + ", ".join(f"{k}={settings[k]}" for k in ("context_size", "batch_size_prompts", "n_eval_reconstruction_batches",
                                                        "n_eval_sparsity_variance_batches")))
    saes = [C.sampled_topk_sae(hooked, args.hook, seed, args.d_sae, 16, settings["context_size"], relative_noise=False) for seed in range(args.variants)]
    family = METRICS["core"]

    def evaluate(sae, artifacts: Path, share: bool):
        family.share_model_work = share
        start = time.perf_counter()
        result = run_metric("core", sae, hooked, lm.hf_model, lm.tokenizer, settings=settings, profile=args.profile,
                            artifacts_dir=artifacts, scratch_dir=work / "scratch")
        seconds = time.perf_counter() - start
        assert result.status == "ok", result.reason
        return seconds, {"raw": {k: v for k, v in result.raw.items() if k not in VOLATILE}, "headline": result.headline}

    # warm-up: stand-in datasets, imports, first-call overheads (not counted)
    evaluate(saes[0], work / "warmup", share=False)

    with timed_passes(hooked) as (split, calls):
        one_seconds, _ = evaluate(saes[0], work / "split", share=False)
    print(f"\none SAE without sharing: {one_seconds:.3f} s, of which")
    for kind, label in (("clean", "clean forward (SAE-independent)"), ("hooked", "spliced + zero-ablated forward (half SAE-independent)"),
                        ("hook_acts", "hook-activation forward (SAE-independent)"), ("draws", "token draws (SAE-independent)")):
        print(f"  {label:56s} {split[kind]:7.3f} s  ({calls[kind]} calls, {100 * split[kind] / one_seconds:4.1f}%)")
    rest = one_seconds - sum(split.values())
    print(f"  {'everything else (SAE encode/decode, KL, metrics, JSON)':56s} {rest:7.3f} s  ({100 * rest / one_seconds:4.1f}%)")

    timings: dict[str, list[float]] = {"without": [], "with": []}
    outputs: dict[str, list] = {"without": [], "with": []}
    for mode, share in (("without", False), ("with", True)):
        artifacts = work / f"run-{mode}"
        for sae in saes:
            seconds, out = evaluate(sae, artifacts, share)
            timings[mode].append(seconds)
            outputs[mode].append(json.dumps(out, sort_keys=True))
    family.share_model_work = True
    identical = outputs["without"] == outputs["with"]

    print(f"\ncore for {args.variants} SAE variants on one model (seconds per variant)")
    for mode in ("without", "with"):
        print(f"  {mode:8s} sharing: " + "  ".join(f"{t:.3f}" for t in timings[mode]))
    rows = {}
    for mode in ("without", "with"):
        first, further = timings[mode][0], timings[mode][1:]
        rows[mode] = (first, statistics.median(further) if further else float("nan"), sum(timings[mode]))
        print(f"  {mode:8s}: first {first:.3f} s, marginal (median of further) {rows[mode][1]:.3f} s, total {rows[mode][2]:.3f} s")
    print(f"  marginal ratio without/with: {rows['without'][1] / rows['with'][1]:.2f}x; "
          f"total ratio: {rows['without'][2] / rows['with'][2]:.2f}x; first-variant overhead of recording: "
          f"{rows['with'][0] / rows['without'][0]:.2f}x")
    print(f"  core numbers identical in both modes for every variant: {identical}")
    sizes = sum(f.stat().st_size for f in (work / "run-with").rglob("shared/*"))
    print(f"  shared-work entry on disk: {sizes / 2**20:.1f} MiB")
    families = {"core": {"first": {m: rows[m][0] for m in rows}, "marginal": {m: rows[m][1] for m in rows},
                         "identical": identical}}
    if "absorption" in args.families.split(","):
        from sae_core.metrics.registry import METRICS as _METRICS

        folder = work / "spelling_model"
        if not (folder / "config.json").exists():
            build_spelling_model(folder)
        spelling = load_language_model(str(folder))
        spelling_hooked = spelling.hooked()
        abs_saes = [C.sampled_topk_sae(spelling_hooked, args.hook, seed, 256, 16, 128, relative_noise=False) for seed in range(args.variants)]
        families["absorption"] = bench_family("absorption", spelling, spelling_hooked, abs_saes,
                                              _METRICS["absorption"].toy_defaults, "hub", work)
    without = sum(f["marginal"]["without"] for f in families.values())
    with_ = sum(f["marginal"]["with"] for f in families.values())
    print(f"\nmarginal cost of one more variant over {', '.join(families)}: {with_:.3f} s with sharing, "
          f"{without:.3f} s without: ratio {with_ / without:.2f}")
    C.emit({"variants": args.variants, "timings": timings, "identical": identical, "split": dict(split),
            "entry_bytes": sizes, "families": families, "marginal_ratio": with_ / without})
    if not all(f["identical"] for f in families.values()):
        raise SystemExit("numbers differ between the two modes")


if __name__ == "__main__":
    main()
