"""Print the cost–quality frontier of SAE fixes of a storage root as markdown (docs/results-repair.md's tables).

Reads every ``variants/*.parquet`` row and the ``metrics/feature_identity/*.parquet`` rows of the root and
prints what the report's section "What it costs to fix the SAE" shows: per (hook, compression) the frontier
table (quality and cost over seeds, gap closed, separation marks, identity) and the fine-tune budget lines
(``sae_core.repair_report``). Not a speed benchmark: it lives here beside the other scripts that print
figures for the docs, so that the doc's tables are generated, not typed.

    .venv/bin/python benchmarks/repair_results.py --storage file:///path/to/root [--plot frontier.png]
        [--hook blocks.6.hook_resid_post] [--compression wanda:0.5]

Exit status 1 when the root holds no variant rows with ``variant_spec`` (a root from before the repair
variants).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_core import repair_report as rr  # noqa: E402
from sae_core.report import current_columns  # noqa: E402
from sae_core.storage import Storage  # noqa: E402


def load(storage_url: str):
    """(variants rows, feature_identity metric rows) of a storage root, under today's column names."""
    storage = Storage(storage_url)
    variants = current_columns(storage.read_parquet_prefix("variants"))
    identity = current_columns(storage.read_parquet_prefix("metrics/feature_identity"))
    core = current_columns(storage.read_parquet_prefix("metrics/core"))  # the KL score joined as a quality measure
    return variants, rr.identity_rows(pd.concat([identity, core], ignore_index=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--storage", required=True, help="storage root URL (file://... or s3://...)")
    parser.add_argument("--hook", help="only this hook")
    parser.add_argument("--compression", help="only this compression spec (e.g. wanda:0.5)")
    parser.add_argument("--plot", type=Path, help="also write the frontier figure (PNG) here")
    args = parser.parse_args(argv)

    variants, identity = load(args.storage)
    if not variants.empty:
        keep = variants.index == variants.index
        if args.hook:
            keep &= variants["hook"] == args.hook
        if args.compression and "compression" in variants:
            keep &= variants["compression"] == args.compression
        variants = variants[keep]
    if not rr.has_variant_spec(variants):
        print(f"no variant rows with variant_spec under {args.storage}/variants (a root from before the repair variants?)",
              file=sys.stderr)
        return 1
    table = rr.frontier_table(variants, identity)
    print(rr.frontier_markdown(table, rr.finetune_budget(variants, identity)))
    if args.plot:
        png = rr.frontier_plot(variants, identity)
        if png:
            args.plot.write_bytes(png)
            print(f"figure: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
