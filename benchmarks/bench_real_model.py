"""Benchmark: the real model (Gemma 3 270M, dequantized float32), caching and WANDA against bare forwards.

Two ratios, each against a baseline measured in the same process on the same token windows:

* caching throughput: ``sae_core.activations.cache_activations`` as the pipeline's caching task calls
  it (the loaded model; residual hooks through the HF model's own forward stopped after the hook's
  decoder layer; tokenizes the text, drops BOS/EOS, writes a safetensors shard) vs a bare HF forward
  that stops after the hook's decoder layer (no LM head), on the same token windows, batch and
  threads; target >= 0.95x the bare forward's tokens/s (issue 20). Measured as ``--repeats`` pairs,
  the order alternating (AB, BA, ...), and reported as the median ratio with its min-max. The old
  route (caching through TransformerLens' view) is timed once for comparison, and the activations
  of the two routes are compared (max abs and relative difference). A full forward with the
  262k-row LM head is printed too, to show what stopping early saves.
* WANDA: ``compress_model(model, "wanda:0.5", ids)`` (50% unstructured, attention + MLP) on the calibration windows vs one full
  forward (incl. LM head) over the same windows; target <= 1.3x (issue 7's bar for GPT-2; WANDA
  skips the 262k-row LM head, ~60% of a forward, but passes each decoder layer twice and sorts rows).

Windows are real text (``debian-text`` train split), ``--seq-len`` tokens (inside the 512-token
sliding window). Wall and process CPU time are both printed: on a shared machine the CPU ratio is
the steadier figure.

Example (a few minutes on 2 quiet cores):
    .venv/bin/python benchmarks/bench_real_model.py --model PATH_TO_DEQUANTIZED_FOLDER --threads 2
    .venv/bin/python benchmarks/bench_real_model.py --model PATH --tokens 4096 --batch 4 --repeats 7 --skip-wanda
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="dequantized HF folder (e.g. <storage>/models/<hash>)")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--tokens", type=int, default=8192, help="tokens forwarded for the caching comparison")
    p.add_argument("--calibration", type=int, default=128, help="WANDA calibration windows")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="(bare, caching) pairs; the median ratio is reported")
    p.add_argument("--skip-tl", action="store_true", help="skip the TransformerLens route (timing and difference)")
    p.add_argument("--skip-full", action="store_true", help="skip the full forward incl. the LM head")
    p.add_argument("--skip-wanda", action="store_true")
    args = p.parse_args(argv)

    import statistics

    import torch

    C.set_threads(args.threads)
    print(C.machine_info(args.threads))
    from sae_core.activations import ActivationCacheSpec, activation_reader, cache_activations, special_token_ids
    from sae_core.datasets import token_batch
    from sae_core.models import load_language_model
    from sae_core.storage import Storage
    from sae_core.compression import compress_model, find_blocks

    model = load_language_model(args.model)
    hf, tok = model.hf_model, model.tokenizer
    hook = f"blocks.{args.layer}.hook_resid_post"
    n_windows = args.tokens // args.seq_len
    windows = token_batch(tok, "debian-text", n_windows, args.seq_len)
    _, blocks = find_blocks(hf)
    specials = torch.tensor(sorted(special_token_ids(tok)))
    kept = int((~torch.isin(windows, specials)).sum())
    # exactly these windows' kept rows (BOS and EOS separators dropped), in one shard: no extra forward
    spec = ActivationCacheSpec(hook_name=hook, dataset="debian-text", n_tokens=kept, seq_len=args.seq_len,
                               batch_sequences=args.batch, shard_sequences=n_windows)

    class Stop(Exception):
        pass

    @torch.no_grad()
    def bare_to_layer():
        def stop(module, inputs, output):
            raise Stop

        handle = blocks[args.layer].register_forward_hook(stop)
        try:
            for s in range(0, n_windows, args.batch):
                try:
                    hf(input_ids=windows[s : s + args.batch], use_cache=False)
                except Stop:
                    pass
        finally:
            handle.remove()

    @torch.no_grad()
    def full_forward(ids):
        for s in range(0, len(ids), args.batch):
            hf(input_ids=ids[s : s + args.batch], use_cache=False)

    def cache_with(source):
        with tempfile.TemporaryDirectory() as tmp:
            manifest = cache_activations(source, tok, spec, Storage(f"file://{tmp}"), "acts", progress=False)
            assert manifest["n_tokens"] == kept, manifest["n_tokens"]
            return manifest["forward"]

    def timed(fn):
        with C.Timer() as t:
            fn()
        return t

    print(f"{n_windows} windows x {args.seq_len} tokens, batch {args.batch}, threads {args.threads}, hook {hook}; "
          f"caching route: {activation_reader(model, hook).forward}")
    bare_to_layer()  # warm-up, both
    cache_with(model)
    pairs = []
    for i in range(args.repeats):
        order = [("bare", bare_to_layer), ("ours", lambda: cache_with(model))]
        t = dict((name, timed(fn)) for name, fn in (order if i % 2 == 0 else order[::-1]))
        pairs.append((t["bare"], t["ours"]))
        print(f"pair {i + 1}: bare wall {t['bare'].wall:6.2f}s cpu {t['bare'].cpu:6.2f}s | caching wall {t['ours'].wall:6.2f}s "
              f"cpu {t['ours'].cpu:6.2f}s | ratio wall {t['bare'].wall / t['ours'].wall:.3f} cpu {t['bare'].cpu / t['ours'].cpu:.3f}")
    wall = [b.wall / o.wall for b, o in pairs]
    cpu = [b.cpu / o.cpu for b, o in pairs]
    med_bare = statistics.median(b.wall for b, _ in pairs)
    med_ours = statistics.median(o.wall for _, o in pairs)
    print(f"{'bare HF forward to the hook layer':40s} median wall {med_bare:7.2f}s  {args.tokens / med_bare:8.0f} tok/s (wall)")
    print(f"{'cache_activations (ours)':40s} median wall {med_ours:7.2f}s  {args.tokens / med_ours:8.0f} tok/s (wall)")
    print(f"caching throughput / bare forward to layer {args.layer} (target >= 0.95), {args.repeats} pairs: "
          f"wall median {statistics.median(wall):.3f}x (min {min(wall):.3f}, max {max(wall):.3f}); "
          f"cpu median {statistics.median(cpu):.3f}x (min {min(cpu):.3f}, max {max(cpu):.3f})")

    if not args.skip_tl:
        hooked = model.hooked()
        tl = timed(lambda: cache_with(hooked))
        print(f"{'cache_activations via TransformerLens':40s} wall {tl.wall:7.2f}s cpu {tl.cpu:7.2f}s  "
              f"{args.tokens / tl.wall:8.0f} tok/s; / bare: wall {med_bare / tl.wall:.3f}x")
        sample = windows[: args.batch]
        new = activation_reader(model, hook)(sample)
        old = activation_reader(hooked, hook)(sample)
        keep = ~torch.isin(sample, specials)
        diff = (new - old)[keep]
        rel = diff.norm(dim=-1) / old[keep].norm(dim=-1)
        print(f"HF route vs TransformerLens route, {int(keep.sum())} kept rows: max abs {diff.abs().max():.3e} "
              f"(activation max abs {old[keep].abs().max():.1f}), max relative (row norm) {rel.max():.3e}, "
              f"median relative {rel.median():.3e}; BOS rows (dropped): max abs {(new - old)[~keep].abs().max():.3e}")
        del hooked
        model._hooked_cache.clear()

    if not args.skip_full:
        full = timed(lambda: full_forward(windows))
        print(f"{'full HF forward incl. LM head':40s} wall {full.wall:7.2f}s cpu {full.cpu:7.2f}s  {args.tokens / full.wall:8.0f} tok/s (wall)")

    if not args.skip_wanda:
        calibration = token_batch(tok, "debian-text", args.calibration, args.seq_len)
        with C.Timer() as fwd:
            full_forward(calibration)
        pruned = copy.deepcopy(hf)
        with C.Timer() as wanda:
            compress_model(pruned, "wanda:0.5", calibration[: args.calibration], batch_size=args.batch, progress=False)
        print(f"one calibration forward ({args.calibration}x{args.seq_len}, incl. LM head) wall {fwd.wall:7.2f}s cpu {fwd.cpu:7.2f}s")
        print(f"WANDA 50% compress_model                   wall {wanda.wall:7.2f}s cpu {wanda.cpu:7.2f}s")
        print(f"WANDA / one calibration forward (target <= 1.3): wall {wanda.wall / fwd.wall:.3f}x cpu {wanda.cpu / fwd.cpu:.3f}x")


if __name__ == "__main__":
    main()
