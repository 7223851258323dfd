"""The marginal cost of one more SAE variant, per SAEBench family, before vs after the evaluation-cost work of
issue 20, in one process on one model: the ratio the issue asks for.

"Before": every family as SAEBench runs it through the adapters, with the LLM-side caches SAEBench keeps
anyway (activations, LLM probes, RAVEL's filtered prompts are built by the first variant and read by the
next ones in both modes), core's shared work off (``Core.share_model_work = False``) and SCR / TPP's
encode memo off (``SAE_TRANSFER_ENCODE_MEMO_MAX_BYTES=0``). "After": the shipped defaults (core's shared
work within its size cap, the encode memo on). Each family first runs one uncounted warm-up variant (it
builds the LLM-side caches both modes then read); then every further variant is timed in both modes,
interleaved (before, after, before, after, ...) so that load changes hit both alike. Every variant's
SAEBench output must be identical in both modes (the script exits non-zero otherwise).

SAE variants: TopK SAEs whose decoder rows are sampled activation directions, one seed each (the cost of
SAEBench's SAE-dependent work depends on the width and k, not on how the SAE was trained).

Examples:
    .venv/bin/python benchmarks/bench_marginal_variant.py --families scr,tpp --variants 3 --threads 1
    flock /tmp/gemma.lock .venv/bin/python benchmarks/bench_marginal_variant.py --model <storage>/compressed_models/<hash>/model \\
        --hook blocks.6.hook_resid_post --profile real --d-sae 2048 --k 32 --variants 2 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

VOLATILE = {"eval_id", "datetime_epoch_millis"}


@contextlib.contextmanager
def mode(name: str):
    """``before``: core's shared work and the SCR / TPP encode memo off; ``after``: the shipped defaults."""
    from sae_core.metrics import encode_memo
    from sae_core.metrics.registry import METRICS

    core, saved_env = METRICS["core"], os.environ.get(encode_memo.MAX_BYTES_ENV)
    default_share = core.share_model_work
    if name == "before":
        core.share_model_work = False
        os.environ[encode_memo.MAX_BYTES_ENV] = "0"
    try:
        yield
    finally:
        core.share_model_work = default_share
        if saved_env is None:
            os.environ.pop(encode_memo.MAX_BYTES_ENV, None)
        else:
            os.environ[encode_memo.MAX_BYTES_ENV] = saved_env


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder (default: build the toy world)")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--profile", default="toy", choices=["toy", "real"])
    p.add_argument("--families", default="core,absorption,scr,tpp,sparse_probing,ravel")
    p.add_argument("--variants", type=int, default=3, help="timed variants per mode, after one warm-up variant")
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)

    from sae_core.metrics import run_metric
    from sae_core.metrics.registry import settings_for
    from sae_core.models import load_language_model

    families = C.metric_families(args.families)
    C.set_threads(args.threads)
    C.print_machine(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-marginal-variant-"))
    model_dir = C.model_dir_or_toy_world(args.model, work)
    lm = load_language_model(model_dir)
    hooked = lm.hooked()
    context = settings_for("core", args.profile)["context_size"]
    saes = [C.sampled_topk_sae(hooked, args.hook, seed, args.d_sae, args.k, context) for seed in range(args.variants + 1)]
    print(f"model {model_dir}, hook {args.hook}, profile {args.profile}, {args.variants} timed variants per mode "
          f"(TopK d_sae {args.d_sae}, k {args.k})")

    artifacts, results = work / "artifacts", {}
    for family in families:
        def evaluate(sae):
            start = time.perf_counter()
            result = run_metric(family, sae, hooked, lm.hf_model, lm.tokenizer, profile=args.profile,
                                artifacts_dir=artifacts, scratch_dir=work / "scratch")
            seconds = time.perf_counter() - start
            if result.status != "ok":
                raise SystemExit(f"{family}: {result.status}: {result.reason}")
            return seconds, json.dumps({"raw": {k: v for k, v in result.raw.items() if k not in VOLATILE},
                                        "headline": result.headline}, sort_keys=True, default=str)

        with mode("after"):
            warm_up, _ = evaluate(saes[0])  # the LLM-side caches and probes, read by both modes afterwards
        timings, outputs = {"before": [], "after": []}, {"before": [], "after": []}
        for sae in saes[1:]:
            for name in ("before", "after"):
                with mode(name):
                    seconds, out = evaluate(sae)
                timings[name].append(seconds)
                outputs[name].append(out)
        marginal = {name: statistics.median(t) for name, t in timings.items()}
        identical = outputs["before"] == outputs["after"]
        results[family] = {"first": warm_up, "timings": timings, "marginal": marginal, "identical": identical}
        print(f"{family:24s} first {warm_up:8.2f} s | further, before: " + " ".join(f"{t:.2f}" for t in timings["before"])
              + " | after: " + " ".join(f"{t:.2f}" for t in timings["after"])
              + f" | marginal ratio {marginal['after'] / marginal['before']:.2f} | identical: {identical}", flush=True)

    before = sum(r["marginal"]["before"] for r in results.values())
    after = sum(r["marginal"]["after"] for r in results.values())
    first = sum(r["first"] for r in results.values())
    print(f"\none more variant over {', '.join(families)}: {after:.2f} s after, {before:.2f} s before: "
          f"ratio {after / before:.2f}; the first variant (LLM-side caches included): {first:.2f} s")
    C.emit({"families": results, "marginal_before": before, "marginal_after": after, "ratio": after / before,
            "first": first, "model": model_dir, "hook": args.hook, "profile": args.profile})
    if not all(r["identical"] for r in results.values()):
        raise SystemExit("SAEBench outputs differ between the two modes")


if __name__ == "__main__":
    main()
