"""Command line for ``python -m flows.full``: preset + overrides, validated before Prefect starts."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import yaml

from flows.runners import check_runner
from sae_core.compression import METHODS
from sae_core.config import KNOWN_METRICS, SAE_PRUNING_RULES, _check_fraction, build_config, preset_names
from sae_core.storage import DEFAULT_STORAGE_URL, Storage, StorageError
from sae_core.study import check_experiment
from sae_core.variants import METHODS as VARIANT_METHODS


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.full",
        description="Run the SAE-transfer experiment (compress an LLM, by default WANDA 50%, compare SAE variants (transfer, "
        "retrain, prune, cheap fixes) on the compressed model with SAEBench metrics) as a cached Prefect flow.",
    )
    p.add_argument("--preset", default="toy", help=f"experiment preset, one of {preset_names()} (default: toy, offline)")
    p.add_argument("--storage", default=DEFAULT_STORAGE_URL, help="storage root: file://PATH or s3://bucket/prefix (default: ./artifacts)")
    p.add_argument("--layers", type=_ints, help="layers to study, e.g. 6 or 0,6,11")
    p.add_argument("--hook-types", type=_names, help="hook types: resid_post, mlp_out, attn_z")
    p.add_argument("--model-sparsities", type=_floats,
                   help="WANDA at these sparsities of the LLM, e.g. 0.5,0.25 (deprecated: --compress wanda:0.5,wanda:0.25)")
    p.add_argument("--compress", type=_names, metavar="SPECS",
                   help="compressions of the LLM, e.g. wanda:0.5,sparsegpt:0.5,magnitude:0.5,wanda:2:4,rtn:8,rtn:4g128 "
                        f"(methods: {', '.join(METHODS)}); replaces --model-sparsities")
    p.add_argument("--variants", type=_names, metavar="SPECS",
                   help="SAE variants built for each compressed model, e.g. transfer,recalibrate,refit_decoder,affine,"
                        "finetune:0.01,finetune:0.05,finetune:0.2,prune:wanda:0.5,retrain (methods: "
                        f"{', '.join(VARIANT_METHODS)}; finetune:F trains F x the retrain budget (train_tokens x epochs); default: transfer, "
                        "retrain if retrained_sae.enabled, prune:RULE:S for --sae-rules x --sae-sparsities)")
    p.add_argument("--sae-sparsities", type=_floats, help="sparsities of the pruned SAEs, e.g. 0.25,0.5,0.75 (the variants' "
                   "prune:RULE:S entries become --sae-rules x these)")
    p.add_argument("--sae-rules", type=_names, help=f"SAE pruning rules from {list(SAE_PRUNING_RULES)} (as --sae-sparsities)")
    p.add_argument("--seeds", type=_ints, help="SAE seeds of this run, e.g. 0,1,2: every trained SAE, variant and metric once per "
                   "seed, so the tables show spread (default: the config's seed)")
    p.add_argument("--tokens", type=int, help="activation tokens cached per hook (also the SAE training budget)")
    p.add_argument("--metrics", type=_names, help=f"metrics from {list(KNOWN_METRICS)}")
    p.add_argument("--device", help="cpu, cuda, cuda:N")
    p.add_argument("--runner", choices=["threads", "ray"], default="threads", help="task runner (ray: a Ray cluster, see README)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="any config field, dotted, e.g. --set retrained_sae.train_tokens=500000 (repeatable)")
    p.add_argument("--allow-mixed-storage", action="store_true",
                   help="run even when the storage root holds this experiment name with another configuration "
                        "(experiments/<name>/experiment.json; refused otherwise, naming the differing fields)")
    p.add_argument("--print-config", action="store_true", help="print the validated config as JSON and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show everything on the console (every Prefect log line, library print and warning); by default "
                        "the console shows one line per task start and finish, progress bars and a summary, and the rest "
                        "goes to the run's log file, <storage>/logs/<start time>-<pid>.log")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout at the end (for scripts)")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        node = overrides
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    if args.layers is not None:
        put("layers", args.layers)
    if args.hook_types is not None:
        put("hook_types", args.hook_types)
    if args.model_sparsities is not None:
        if args.compress is not None:
            raise ValueError("give --compress or --model-sparsities, not both (--compress wanda:0.5,wanda:0.25 covers both)")
        put("compression", [f"wanda:{s!r}" for s in _check_fraction(args.model_sparsities, "LLM sparsity")])
    if args.compress is not None:
        put("compression", args.compress)
    if args.variants is not None:
        put("variants", args.variants)
    if args.sae_sparsities is not None:
        put("pruned_sae.sparsities", args.sae_sparsities)
    if args.sae_rules is not None:
        put("pruned_sae.rules", args.sae_rules)
    if args.seeds is not None:
        put("seeds", args.seeds)
    if args.tokens is not None:
        put("activations.n_tokens", args.tokens)
    if args.metrics is not None:
        put("metrics", args.metrics)
    if args.device is not None:
        put("device", args.device)
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        put(key.strip(), yaml.safe_load(value))
    if args.variants is None and (args.sae_sparsities is not None or args.sae_rules is not None) and "variants" not in overrides:
        put("variants", _with_prune_grid(args.preset, overrides))
    return overrides


def _with_prune_grid(preset: str, overrides: dict[str, Any]) -> list[str] | None:
    """--sae-rules / --sae-sparsities without --variants: the preset's variants with their prune entries
    replaced by rules x sparsities (where the first stood), every other variant kept."""
    config = build_config(preset, overrides)
    prunes = [f"prune:{rule}:{s!r}" for rule in config.pruned_sae.rules for s in config.pruned_sae.sparsities]
    texts = [v.text for v in config.variants]
    at = next((i for i, v in enumerate(config.variants) if v.method == "prune"), len(texts))
    kept = [t for t in texts if not t.startswith("prune:")]
    return kept[:at] + prunes + kept[at:]


def check_references(config) -> None:
    """Model, hooks and SAE release names exist (local checks: folders, TransformerLens and sae-lens
    registries; for a hub model whose config TransformerLens does not table, its small config.json)."""
    from sae_core.toy.world import TOY_MODEL

    if config.model != TOY_MODEL:
        from sae_core.models import check_hooks_exist, check_model_reference

        check_model_reference(config.model)
        check_hooks_exist(config.model, config.hook_names())
    for hook in config.hook_names():
        source = config.original_sae_source(hook)
        if source and "release" in source:
            from sae_core.sae_io import validate_pretrained

            validate_pretrained(source["release"], source["sae_id"])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Everything that can be wrong is checked here, before Prefect (and its server) starts.
    try:
        overrides = overrides_from_args(args)
        config = build_config(args.preset, overrides)
        check_references(config)
        storage = Storage(args.storage)
        storage.check_reachable()
        check_runner(args.runner)  # e.g. a malformed SAE_TRANSFER_RAY_INIT
        if not args.print_config:
            check_experiment(storage, config, allow_mixed=args.allow_mixed_storage, command=" ".join(sys.argv))
    except (ValueError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    from flows.console import run_console
    from flows.server import start_temporary_server

    server = start_temporary_server()  # no API configured: a temporary server that dies with this process
    # The console: task lines, bars and a summary; warnings, library output and logs to the run's log file.
    with run_console(storage, verbose=args.verbose, temporary_server=server is not None,
                     argv=sys.argv[1:] if argv is None else argv) as console:
        from flows.full import full  # imported while the server boots

        with server.in_use() if server is not None else contextlib.nullcontext():
            summary = full(preset=args.preset, overrides=overrides, storage_url=storage.url, runner=args.runner,
                           allow_mixed_storage=args.allow_mixed_storage)
        console.finished(summary)
    if console.exit_code:  # the error was shown in full
        return console.exit_code
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
