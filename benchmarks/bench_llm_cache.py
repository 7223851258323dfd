"""The first variant of a run, per SAEBench family, with SAEBench's LLM-side caches cold vs kept from an
earlier run (sae_core.metrics.safe_cache; issue 20, docs/benchmarks.md section 11.5).

Each repeat times two "first variants of a run" on the same model and SAE, interleaved so that load changes
hit both alike: "cold" -- a fresh run folder and a fresh LLM cache (what every run paid before the LLM-side
caches outlived a run); "warm" -- a fresh run folder (stand-in datasets rebuilt, as a new flow run does) and
the LLM cache an earlier run left. Every warm output must equal the cold one (the script exits non-zero
otherwise) and every warm run must have found its entry ("warm").

Examples:
    .venv/bin/python benchmarks/bench_llm_cache.py --families sparse_probing,scr,tpp --repeats 3 --threads 1
    flock /tmp/gemma.lock .venv/bin/python benchmarks/bench_llm_cache.py --model <storage>/compressed_models/<hash> \
        --hook blocks.6.hook_resid_post --profile real --d-sae 2048 --k 32 --repeats 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_marginal_variant import VOLATILE  # noqa: E402

C.ensure_repo_on_path()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="sparse_probing,scr,tpp")
    p.add_argument("--model", default=None, help="HF model folder (default: build the toy world)")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--profile", default="toy", choices=["toy", "real"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")

    from sae_core.metrics import run_metric
    from sae_core.metrics.registry import get_metric, settings_for
    from sae_core.models import load_language_model

    families = C.metric_families(args.families)
    C.set_threads(args.threads)
    C.print_machine(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-llm-cache-"))
    lm = load_language_model(C.model_dir_or_toy_world(args.model, work))
    hooked = lm.hooked()
    sae = C.sampled_topk_sae(hooked, args.hook, 0, args.d_sae, args.k, settings_for("core", args.profile)["context_size"])

    runs = iter(range(10**6))
    results, ok = {}, True
    for family in families:
        def first_variant(llm_cache: Path):
            run = work / f"run-{next(runs)}"
            start = time.perf_counter()
            result = run_metric(family, sae, hooked, lm.hf_model, lm.tokenizer, profile=args.profile, artifacts_dir=run / "artifacts",
                                scratch_dir=run / "scratch", llm_cache_dir=llm_cache)
            seconds = time.perf_counter() - start
            if result.status != "ok":
                raise SystemExit(f"{family}: {result.status}: {result.reason}")
            out = json.dumps({"raw": {k: v for k, v in result.raw.items() if k not in VOLATILE}, "headline": result.headline},
                             sort_keys=True, default=str)
            return seconds, out, get_metric(family).last_llm_cache.status

        kept = work / f"llm-cache-{family}"
        first_variant(kept)  # the earlier run that leaves its LLM cache
        timings, outputs, statuses = {"cold": [], "warm": []}, {"cold": [], "warm": []}, []
        for i in range(args.repeats):
            for name in ("cold", "warm"):
                seconds, out, status = first_variant(work / f"llm-cache-fresh-{family}-{i}" if name == "cold" else kept)
                timings[name].append(seconds)
                outputs[name].append(out)
                statuses.append((name, status))
        identical = len(set(outputs["cold"] + outputs["warm"])) == 1
        hits = all(status == name for name, status in statuses)
        ok = ok and identical and hits
        median = {name: statistics.median(t) for name, t in timings.items()}
        results[family] = {"timings": timings, "median": median, "identical": identical, "statuses_as_expected": hits}
        print(f"{family:16s} cold: " + " ".join(f"{t:.2f}" for t in timings["cold"]) + " | warm: "
              + " ".join(f"{t:.2f}" for t in timings["warm"])
              + f" | median {median['cold']:.2f} -> {median['warm']:.2f} s ({median['warm'] / median['cold']:.2f})"
              + f" | identical: {identical} | cache hits as expected: {hits}", flush=True)
    cold = sum(r["median"]["cold"] for r in results.values())
    warm = sum(r["median"]["warm"] for r in results.values())
    print(f"\nfirst variant of a run over {', '.join(families)}: {cold:.2f} s cold, {warm:.2f} s warm ({warm / cold:.2f})")
    C.emit({"families": results, "cold": cold, "warm": warm, "ratio": warm / cold})
    if not ok:
        raise SystemExit("outputs differ or a warm run missed its cache")


if __name__ == "__main__":
    main()
