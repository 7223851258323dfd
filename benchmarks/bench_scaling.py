"""Benchmark: how activation caching and WANDA pruning scale with tokens and with model width.

Models: randomly initialised 2-layer GPT-2s (``transformers.GPT2Config``; n_head 4, MLP 4x,
context ``--seq-len``) with a byte-level BPE tokenizer trained on the toy corpus, saved as HF
folders and loaded with ``load_language_model`` like any model of the pipeline. Timing only:
random weights do the same arithmetic as trained ones.

  caching  ``cache_activations`` (the product code: toy-corpus text -> tokens -> hooked forward
           -> safetensors shards) at ``--hook``, into a fresh storage folder per run;
  WANDA    ``compress_model(model, "wanda:0.5", ids)`` (sequential, all attention + MLP linears, unstructured 50%) on a
           fresh copy of the HF model (the copy is not timed) with pre-built calibration windows.

Token scaling: ``1x, 2x, 4x, 8x`` the base amount at ``--width-for-tokens``; width scaling:
d_model ``--widths`` at 2x the base amount. Each point: median of ``--repeats`` runs. The
printed exponent b is the least-squares slope of log(time) on log(size) (time ~ size^b);
fixed per-call costs (per-row sorting in WANDA, shard writes, corpus start) pull b below 1
at small sizes, so an affine fit (fixed seconds + microseconds per token) is printed too.
The caching table also shows the tokens actually *forwarded* (counted at the embedding): the
cache computes whole shards, so asking for a little more than a multiple of a shard's rows
forwards a whole extra shard (see docs/benchmarks.md).

Example (about a minute on 2 CPU cores):
    .venv/bin/python benchmarks/bench_scaling.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_repo_on_path()


def make_model(folder: Path, tokenizer, d_model: int, n_layer: int, seq_len: int, seed: int = 0) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=seq_len, n_ctx=seq_len, n_embd=d_model, n_layer=n_layer,
                     n_head=4, n_inner=4 * d_model, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def time_caching(lm, hooked, hook: str, n_tokens: int, a, work: Path, repeats: int) -> float:
    from sae_core.activations import ActivationCacheSpec, cache_activations
    from sae_core.storage import Storage

    spec = ActivationCacheSpec(hook_name=hook, dataset=a.dataset, n_tokens=n_tokens, seq_len=a.seq_len,
                               batch_sequences=a.batch_sequences, shard_sequences=a.shard_sequences)
    walls, cpus, forwarded = [], [], [0]

    def count(module, args, output):  # tokens through the embedding = tokens forwarded
        forwarded[0] += args[0].numel()

    handle = hooked.embed.register_forward_hook(count)
    try:
        for r in range(repeats):
            out = work / f"cache-{time.perf_counter_ns()}"
            forwarded[0] = 0
            with C.Timer() as t:
                cache_activations(hooked, lm.tokenizer, spec, Storage(f"file://{out}"), "acts", progress=False)
            walls.append(t.wall)
            cpus.append(t.cpu)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        handle.remove()
    return C.median(walls), C.median(cpus), forwarded[0]


def time_wanda(lm, ids, n_samples: int, repeats: int) -> float:
    import torch

    from sae_core.compression import compress_model
    walls, cpus = [], []
    for _ in range(repeats):
        model = copy.deepcopy(lm.hf_model)
        with C.Timer() as t:
            compress_model(model, "wanda:0.5", ids[:n_samples], batch_size=8, progress=False)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        walls.append(t.wall)
        cpus.append(t.cpu)
        del model
    return C.median(walls), C.median(cpus)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--multipliers", default="1,2,4,8")
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--width-for-tokens", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--base-cache-tokens", type=int, default=8192, help="caching tokens at 1x")
    p.add_argument("--base-wanda-samples", type=int, default=16, help="WANDA calibration windows at 1x")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-sequences", type=int, default=16)
    p.add_argument("--shard-sequences", type=int, default=64)
    p.add_argument("--hook", default=None, help="default: blocks.<n_layer-1>.hook_resid_post")
    p.add_argument("--dataset", default="toy-corpus:1")
    p.add_argument("--device", default="cpu", help="cpu or cuda (models and WANDA on this device)")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)

    threads = C.set_threads(a.threads)
    machine = C.print_machine(threads)
    import torch

    from sae_core.activations import hook_activations
    from sae_core.datasets import iter_texts, token_windows
    from sae_core.models import load_language_model
    from sae_core.toy.corpus import generate_corpus
    from sae_core.toy.world import train_tokenizer

    mults = [int(x) for x in a.multipliers.split(",")]
    widths = [int(x) for x in a.widths.split(",")]
    hook = a.hook or f"blocks.{a.n_layer - 1}.hook_resid_post"
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    t0 = time.perf_counter()
    try:
        tokenizer = train_tokenizer([d.text for d in generate_corpus(500, seed=0)], 512)
        max_samples = a.base_wanda_samples * max(mults + [2])
        models = {}
        for w in sorted(set(widths + [a.width_for_tokens])):
            lm = load_language_model(make_model(work / f"gpt2-d{w}", tokenizer, w, a.n_layer, a.seq_len), device=a.device)
            models[w] = (lm, lm.hooked(None))
        ids = torch.stack(list(itertools.islice(token_windows(tokenizer, iter_texts("toy-corpus:2"), a.seq_len), max_samples)))
        for lm, hooked in models.values():  # warm-up: first forward / allocator
            hook_activations(hooked, ids[: a.batch_sequences], hook)
        print(f"set-up {time.perf_counter() - t0:.1f} s; hook={hook}, seq_len={a.seq_len}, repeats={a.repeats}, "
              f"n_layer={a.n_layer}", flush=True)

        # ---- token scaling
        lm, hooked = models[a.width_for_tokens]
        rows = []
        for m in mults:
            n_tok = m * a.base_cache_tokens
            n_smp = m * a.base_wanda_samples
            tc, cc, fwd = time_caching(lm, hooked, hook, n_tok, a, work, a.repeats)
            tw, cw = time_wanda(lm, ids, n_smp, a.repeats)
            rows.append((m, n_tok, tc, n_smp * a.seq_len, tw, fwd, cc, cw))
            print(f"  tokens x{m}: caching {n_tok} tok {tc:.3f} s, WANDA {n_smp * a.seq_len} calib tok {tw:.3f} s "
                  f"(load {C.load_average()[0]:.2f})", flush=True)
        print(f"\nToken scaling (d_model={a.width_for_tokens}, {a.n_layer} layers, threads={threads}, median of {a.repeats})")
        print(f"{'x':>3s} {'cache tokens':>13s} {'forwarded':>10s} {'cache s':>9s} {'cpu s':>7s} {'tok/s':>9s} "
              f"{'WANDA tokens':>13s} {'WANDA s':>9s} {'cpu s':>7s} {'tok/s':>9s}")
        for m, n_tok, tc, n_w, tw, fwd, cc, cw in rows:
            print(f"{m:>3d} {n_tok:13,d} {fwd:10,d} {tc:9.3f} {cc:7.3f} {n_tok / tc:9,.0f} {n_w:13,d} {tw:9.3f} {cw:7.3f} {n_w / tw:9,.0f}")
        b_cache = C.fit_exponent([r[1] for r in rows], [r[2] for r in rows])
        b_wanda = C.fit_exponent([r[3] for r in rows], [r[4] for r in rows])
        print(f"fitted exponent in tokens: caching {b_cache:.2f}, WANDA {b_wanda:.2f}  (expect ~1: linear)")
        b_fwd = C.fit_exponent([r[5] for r in rows], [r[2] for r in rows])
        print(f"caching time vs tokens actually forwarded: exponent {b_fwd:.2f}")
        print(f"same fits on process CPU time (robust to other processes on the cores): caching "
              f"{C.fit_exponent([r[1] for r in rows], [r[6] for r in rows]):.2f} (vs forwarded "
              f"{C.fit_exponent([r[5] for r in rows], [r[6] for r in rows]):.2f}), WANDA "
              f"{C.fit_exponent([r[3] for r in rows], [r[7] for r in rows]):.2f}")
        for name, xs, ys in (("caching", [r[1] for r in rows], [r[2] for r in rows]),
                             ("WANDA", [r[3] for r in rows], [r[4] for r in rows])):
            fixed, per_tok = C.fit_affine(xs, ys)
            print(f"affine fit {name}: time = {fixed:.3f} s + {1e6 * per_tok:.2f} us/token")

        # ---- width scaling
        wrows = []
        n_tok, n_smp = 2 * a.base_cache_tokens, 2 * a.base_wanda_samples
        for w in widths:
            lm, hooked = models[w]
            n_params = sum(p.numel() for blk in lm.hf_model.transformer.h for p in blk.parameters())
            same = w == a.width_for_tokens and 2 in mults
            if same:
                tc, cc, tw, cw = next((r[2], r[6], r[4], r[7]) for r in rows if r[0] == 2)
            else:
                tc, cc, _ = time_caching(lm, hooked, hook, n_tok, a, work, a.repeats)
                tw, cw = time_wanda(lm, ids, n_smp, a.repeats)
            wrows.append((w, n_params, tc, tw, cc, cw))
            print(f"  d_model {w}: caching {tc:.3f} s, WANDA {tw:.3f} s (load {C.load_average()[0]:.2f})", flush=True)
        print(f"\nWidth scaling ({n_tok} caching tokens, {n_smp * a.seq_len} WANDA tokens, {a.n_layer} layers)")
        print(f"{'d_model':>7s} {'block params':>13s} {'cache s':>9s} {'cpu s':>7s} {'tok/s':>9s} {'WANDA s':>9s} {'cpu s':>7s} {'tok/s':>9s}")
        for w, n_params, tc, tw, cc, cw in wrows:
            print(f"{w:7d} {n_params:13,d} {tc:9.3f} {cc:7.3f} {n_tok / tc:9,.0f} {tw:9.3f} {cw:7.3f} {n_smp * a.seq_len / tw:9,.0f}")
        bw_cache = C.fit_exponent([r[0] for r in wrows], [r[2] for r in wrows])
        bw_wanda = C.fit_exponent([r[0] for r in wrows], [r[3] for r in wrows])
        print(f"fitted exponent in d_model: caching {bw_cache:.2f}, WANDA {bw_wanda:.2f}  "
              f"(matmul FLOPs grow as d_model^2, attention scores as d_model; small widths are overhead-bound)")
        print(f"on CPU time: caching {C.fit_exponent([r[0] for r in wrows], [r[4] for r in wrows]):.2f}, "
              f"WANDA {C.fit_exponent([r[0] for r in wrows], [r[5] for r in wrows]):.2f}")
        print(f"total benchmark time {time.perf_counter() - t0:.1f} s; load avg at end {C.load_average()}")
        C.emit({"tokens": rows, "widths": wrows, "exp_tokens_cache": b_cache, "exp_forwarded_cache": b_fwd, "exp_tokens_wanda": b_wanda,
                "exp_width_cache": bw_cache, "exp_width_wanda": bw_wanda, "machine": machine})
    finally:
        C.remove_unless_kept(work, a.keep)


if __name__ == "__main__":
    main()
