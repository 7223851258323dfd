"""Benchmark: WANDA wall time vs. a bare forward pass over the same calibration set.

Default model: GPT-2-Small shape (12 layers, d=768, 12 heads, vocab 50257), randomly
initialised from a config (no hub access). ``--model PATH`` loads a local HF folder instead.
Target: WANDA wall time <= 1.3x the bare forward pass (full model incl. LM head, batched,
``torch.no_grad``, ``use_cache=False``).

Example (quick on 2 CPUs):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_wanda.py --layers 4 --samples 16 --seq-len 128
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from sae_core.compression import compress_model, find_blocks, parse_spec  # noqa: E402


def build_model(args) -> torch.nn.Module:
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, dtype=getattr(torch, args.dtype))
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(args.seed)
        heads = args.heads or max(1, args.width // 64)
        cfg = GPT2Config(
            n_layer=args.layers, n_embd=args.width, n_head=heads, vocab_size=args.vocab,
            n_positions=max(1024, args.seq_len),
        )
        model = GPT2LMHeadModel(cfg).to(getattr(torch, args.dtype))
    return model.to(args.device).eval()


def args_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _sync(model) -> None:
    if args_device(model).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forward(model, ids, batch_size) -> C.Timer:
    with C.Timer() as t:
        for s in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[s : s + batch_size].to(args_device(model)), use_cache=False)
        _sync(model)
    return t


@torch.no_grad()
def blocks_forward(model, ids, batch_size) -> C.Timer:
    """Forward that stops after the last decoder block (no final norm / LM head)."""
    _, blocks = find_blocks(model)

    class Stop(Exception):
        pass

    def hook(mod, args, output):
        raise Stop

    h = blocks[-1].register_forward_hook(hook)
    try:
        with C.Timer() as t:
            for s in range(0, ids.shape[0], batch_size):
                try:
                    model(input_ids=ids[s : s + batch_size].to(args_device(model)), use_cache=False)
                except Stop:
                    pass
            _sync(model)
        return t
    finally:
        h.remove()


def timed_prune(model, ids, spec, batch_size: int) -> C.Timer:
    m = copy.deepcopy(model)
    _sync(m)
    with C.Timer() as t:
        compress_model(m, spec, ids, batch_size=batch_size, progress=False)
        _sync(m)
    del m
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local HF model folder (default: random GPT-2-Small-shaped model)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=0, help="default: width // 64")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--structure", default="unstructured")
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions (median reported)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args)
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.samples, args.seq_len), generator=g)
    strength = args.structure if args.structure != "unstructured" else repr(args.sparsity)
    wanda_spec, mag_spec = parse_spec(f"wanda:{strength}"), parse_spec(f"magnitude:{strength}")  # magnitude: per row

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model or 'random GPT-2 shape'} layers={len(find_blocks(model)[1])} "
          f"params={n_params / 1e6:.1f}M dtype={args.dtype} device={args.device} threads={torch.get_num_threads()}")
    print(f"calibration: {args.samples} x {args.seq_len} tokens, batch {args.batch_size}; "
          f"{args.structure} sparsity={wanda_spec.sparsity}")

    bare_forward(model, ids[: args.batch_size], args.batch_size)  # warm-up
    runs = {"fwd": [], "blk": [], "wanda": [], "mag": []}
    for _ in range(args.repeats):  # interleaved, so slow drifts in machine load hit all alike
        runs["fwd"].append(bare_forward(model, ids, args.batch_size))
        runs["blk"].append(blocks_forward(model, ids, args.batch_size))
        runs["wanda"].append(timed_prune(model, ids, wanda_spec, args.batch_size))
        runs["mag"].append(timed_prune(model, None, mag_spec, args.batch_size))

    def med(key, attr):
        return statistics.median(getattr(t, attr) for t in runs[key])

    def ratio(num, den, attr):  # median of per-repeat (paired) ratios
        return statistics.median(getattr(a, attr) / getattr(b, attr) for a, b in zip(runs[num], runs[den]))

    print(f"median of {args.repeats} repeat(s)                  wall s     cpu s")
    for key, label in [("fwd", "bare forward (full model, incl. LM head)"), ("blk", "forward through decoder blocks only"),
                       ("wanda", "WANDA compress_model"), ("mag", "magnitude (per row) compress_model")]:
        print(f"{label:42s} {med(key, 'wall'):8.3f}  {med(key, 'cpu'):8.3f}")
    print(f"{'ratio WANDA / bare forward (target <= 1.3)':42s} {ratio('wanda', 'fwd', 'wall'):7.3f}x  {ratio('wanda', 'fwd', 'cpu'):7.3f}x")
    print(f"{'ratio WANDA / blocks-only forward':42s} {ratio('wanda', 'blk', 'wall'):7.3f}x  {ratio('wanda', 'blk', 'cpu'):7.3f}x")


if __name__ == "__main__":
    main()
