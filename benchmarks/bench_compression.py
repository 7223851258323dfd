"""Benchmark: the cost of each compression method as a ratio of WANDA's, same model, same calibration.

Every method runs through ``sae_core.compression.compress_model`` on a private copy of one
randomly initialised GPT-2-shaped model (no hub access; ``--model PATH`` loads a local HF
folder) with the same calibration windows. Repeats are interleaved so that slow drifts in
machine load hit every method alike; ratios are medians of per-repeat (paired) ratios to WANDA.
The figure people ask about is SparseGPT / WANDA (notes §3.3: an O(d_in^3) inverse plus an
O(d_out d_in^2) column sweep per module against WANDA's one pass and a per-row sort).

Example (small, 1 thread):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_compression.py --layers 2 --width 256 --samples 16 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

C.ensure_repo_on_path()

import torch  # noqa: E402

from bench_wanda import build_model  # noqa: E402  (the same model builder as the WANDA benchmark)
from sae_core.compression import compress_model, find_blocks  # noqa: E402


def timed(model, spec: str, ids, batch_size: int) -> tuple[C.Timer, float]:
    m = copy.deepcopy(model)
    with C.Timer() as t:
        report = compress_model(m, spec, ids, batch_size=batch_size, progress=False)
    del m
    return t, report.relative_error


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local HF model folder (default: random GPT-2-shaped model)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=0, help="default: width // 64")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--specs", default="wanda:0.5,sparsegpt:0.5,wanda:2:4,sparsegpt:2:4,magnitude:0.5,rtn:4,gptq:4",
                   help="comma-separated specs; the first must be the WANDA baseline")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    C.print_machine(threads)

    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    if not specs[0].startswith("wanda:"):
        raise SystemExit(f"the first spec is the baseline and must be WANDA, got {specs[0]!r}")
    model = build_model(args)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(args.seed))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model or 'random GPT-2 shape'} layers={len(find_blocks(model)[1])} width={args.width} "
          f"params={n_params / 1e6:.1f}M dtype={args.dtype} device={args.device}")
    print(f"calibration: {args.samples} x {args.seq_len} tokens, batch {args.batch_size}; repeats {args.repeats}")

    timed(model, specs[0], ids[: args.batch_size], args.batch_size)  # warm-up
    runs: dict[str, list[C.Timer]] = {s: [] for s in specs}
    errors: dict[str, float] = {}
    for _ in range(args.repeats):
        for spec in specs:
            t, errors[spec] = timed(model, spec, ids, args.batch_size)
            runs[spec].append(t)

    def ratio(spec: str, attr: str) -> float:
        return statistics.median(getattr(a, attr) / getattr(b, attr) for a, b in zip(runs[spec], runs[specs[0]]))

    print(f"{'spec':16s} {'wall s':>8s} {'cpu s':>8s} {'wall / ' + specs[0]:>18s} {'cpu / ' + specs[0]:>17s}  rel. weight error")
    result = {}
    for spec in specs:
        wall = statistics.median(t.wall for t in runs[spec])
        cpu = statistics.median(t.cpu for t in runs[spec])
        print(f"{spec:16s} {wall:8.3f} {cpu:8.3f} {ratio(spec, 'wall'):17.2f}x {ratio(spec, 'cpu'):16.2f}x  {errors[spec]:.4f}")
        result[spec] = {"wall_s": wall, "cpu_s": cpu, "wall_ratio": ratio(spec, "wall"), "cpu_ratio": ratio(spec, "cpu"),
                        "relative_weight_error": errors[spec]}
    C.emit(result)


if __name__ == "__main__":
    main()
