"""Benchmark: the feature audit's cost as a ratio of the activation caching it replaces.

What is compared, on the same model (the toy preset's world unless ``--small``), the same hook,
the same ``--tokens`` held-out tokens, in one process, ``--threads`` intra-op threads:
  * baseline: ``sae_core.activations.cache_activations`` of the dense model's activations at the
    hook (tokenize + one forward to the hook + write safetensors shards to a local folder);
  * audit: ``sae_core.feature_audit.audit_feature_fidelity`` (tokenize + forward of the dense AND
    the compressed model + SAE encode of both + streaming float64 sums), with and without the
    same-token perplexity (which runs both forwards to the logits).
The compressed model is a copy of the dense one with a third of every block matrix zeroed (its
values do not change the cost). The SAE is a TopK SAE of the preset's width (d_sae 512, k 16).
An audit needs two forward passes where caching needs one, so ~2x is the floor; the target is
<= 3x with perplexity. Median of ``--repeats`` runs after one warm-up.

    .venv/bin/python benchmarks/bench_feature_audit.py --threads 1             # toy preset world
    .venv/bin/python benchmarks/bench_feature_audit.py --threads 1 --small     # the test-sized world
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_repo_on_path()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="the tests' toy world (d_model 64) instead of the preset's")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    import torch

    from sae_core.activations import ActivationCacheSpec, cache_activations, special_token_ids
    from sae_core.config import build_config
    from sae_core.datasets import token_batch
    from sae_core.feature_audit import audit_feature_fidelity
    from sae_core.models import load_language_model
    from sae_core.sae_io import new_sae
    from sae_core.storage import Storage
    from sae_core.toy.world import ToyWorldConfig, build_toy_world

    C.set_threads(args.threads)
    C.print_machine(args.threads)
    config = build_config("toy")
    world_cfg = config.toy_world
    if args.small:
        from tests.conftest import TEST_TOY_WORLD

        world_cfg = ToyWorldConfig(**TEST_TOY_WORLD)
    seq_len = min(config.activations.seq_len, world_cfg.n_ctx)
    hook = config.hook_names()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    with C.Timer() as t_world:
        world = build_toy_world(work / "world", world_cfg, progress=False)
    print(f"toy world d_model={world_cfg.d_model} n_layer={world_cfg.n_layer} built in {t_world.wall:.1f}s; hook {hook}, "
          f"{args.tokens} tokens in windows of {seq_len}")

    model = load_language_model(str(world.model_dir))
    dense = model.hooked()
    compressed = copy.deepcopy(dense)
    with torch.no_grad():
        for name, p in compressed.named_parameters():
            if p.ndim >= 2 and name.startswith("blocks."):
                p[p.abs() <= p.abs().flatten().kthvalue(max(1, p.numel() // 3)).values] = 0
    sae = new_sae("topk", world_cfg.d_model, 512, hook, k=16, seed=0)
    specials = special_token_ids(model.tokenizer)
    skip = 5000
    windows = -(-args.tokens // (seq_len - 2))

    def caching(index: int) -> None:
        spec = ActivationCacheSpec(hook_name=hook, dataset=config.dataset, n_tokens=args.tokens, seq_len=seq_len,
                                   batch_sequences=16, shard_sequences=256, skip_sequences=skip)
        cache_activations(dense, model.tokenizer, spec, Storage(f"file://{work}/cache{index}"), "acts", progress=False)

    def audit(with_perplexity: bool):
        tokens = token_batch(model.tokenizer, config.dataset, windows, seq_len, skip_sequences=skip)
        return audit_feature_fidelity(dense, compressed, sae, tokens, hook, exclude_ids=specials, batch_sequences=16,
                                      with_perplexity=with_perplexity)

    caching(-1)  # warm-up: first-call allocations, tokenizer, corpus generator
    audit(False)
    results: dict[str, list[float]] = {"caching": [], "audit": [], "audit+ppl": []}
    cpu: dict[str, list[float]] = {name: [] for name in results}
    summary = None
    for index in range(args.repeats):
        with C.Timer() as t:
            caching(index)
        results["caching"].append(t.wall)
        cpu["caching"].append(t.cpu)
        with C.Timer() as t:
            audit(False)
        results["audit"].append(t.wall)
        cpu["audit"].append(t.cpu)
        with C.Timer() as t:
            summary = audit(True)
        results["audit+ppl"].append(t.wall)
        cpu["audit+ppl"].append(t.cpu)
    base, base_cpu = C.median(results["caching"]), C.median(cpu["caching"])
    # With 1 thread on shared cores, process CPU time is the steadier figure; wall time is printed too.
    print(f"{'step':<12} {'median wall':>12} {'ratio':>7} {'median cpu':>12} {'ratio':>7}   wall runs")
    for name, times in results.items():
        print(f"{name:<12} {C.fmt_s(C.median(times)):>12} {C.median(times) / base:6.2f}x {C.fmt_s(C.median(cpu[name])):>12} "
              f"{C.median(cpu[name]) / base_cpu:6.2f}x   " + " ".join(f"{x:.2f}" for x in times))
    print(f"audit: {summary.summary['n_tokens']} tokens, {summary.summary['n_active']} active features, "
          f"survived {100 * summary.summary['survived_frac']:.1f}% ± {100 * summary.summary['survived_frac_subset_std']:.1f}")
    C.emit({"tokens": args.tokens, "caching_s": base, "audit_s": C.median(results["audit"]),
            "audit_ppl_s": C.median(results["audit+ppl"]), "caching_cpu_s": base_cpu, "audit_cpu_s": C.median(cpu["audit"]),
            "audit_ppl_cpu_s": C.median(cpu["audit+ppl"])})
    C.remove_unless_kept(work, args.keep)


if __name__ == "__main__":
    main()
