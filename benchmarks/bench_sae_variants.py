"""Wall time of the "pruned" SAE variant (norm accumulation + prune) vs the "retrained" one.

Both variants are built from the same activations: pruning reads a calibration slice
(``--calib-tokens``, the first rows), retraining reads ``--tokens`` rows with sae-lens'
trainer.  Pruning is a forward pass over the calibration tokens plus a sort per
matrix; training is forward + backward + Adam over every training token, so the
ratio grows with ``tokens / calib-tokens`` (about 3x that ratio for big SAEs).  The
equal-token ratio (norms over all ``--tokens``) is printed too, and a projection for
a realistic training budget from the measured per-token rates.

Activation sources: ``--source random`` (Gaussian, default), ``--source tiny-model``
(a random 2-layer HookedTransformer with d_model=d_in), or ``--activations PATH``
(a safetensors file, or a folder of them, each holding an ``activations [rows, d_in]``
tensor - the layout of our activation-cache shards).  ``--sae FOLDER|release:...``
benchmarks a real SAE instead of a fresh one.

Example (defaults; well under a minute on 2 CPU cores):
    .venv/bin/python benchmarks/bench_sae_variants.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_core.sae_io import load_sae, new_sae  # noqa: E402
from sae_core.sae_prune import accumulate_sae_norms, prune_sae  # noqa: E402
from sae_core.sae_train import train_sae  # noqa: E402


def load_activation_files(path: str | Path, max_tokens: int | None = None) -> torch.Tensor:
    """Rows of ``activations`` from one safetensors file or every ``*.safetensors`` in a folder."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .safetensors files at {str(path)!r}")
    parts, n = [], 0
    for f in files:
        tensors = load_file(f)
        if "activations" not in tensors:
            raise ValueError(f"{str(f)!r} has no 'activations' tensor (keys: {sorted(tensors)})")
        parts.append(tensors["activations"].float())
        n += parts[-1].shape[0]
        if max_tokens is not None and n >= max_tokens:
            break
    acts = torch.cat(parts)
    return acts[:max_tokens] if max_tokens is not None else acts


def make_activations(source: str, n_tokens: int, d_in: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if source == "random":
        # correlated, non-isotropic Gaussian so norms differ across dims
        mix = torch.randn(d_in, d_in, generator=gen) / d_in**0.5
        scale = torch.rand(d_in, generator=gen) * 2 + 0.1
        return (torch.randn(n_tokens, d_in, generator=gen) @ mix) * scale
    if source == "tiny-model":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        n_heads = 4 if d_in % 4 == 0 else 1
        cfg = HookedTransformerConfig(
            n_layers=2, d_model=d_in, n_ctx=128, d_head=d_in // n_heads, n_heads=n_heads,
            d_vocab=1000, act_fn="gelu", d_mlp=4 * d_in, seed=seed,
        )
        model = HookedTransformer(cfg).eval()
        n_seq = -(-n_tokens // 128)
        tokens = torch.randint(0, 1000, (n_seq, 128), generator=gen)
        out = []
        with torch.no_grad():
            for chunk in tokens.split(64):
                _, cache = model.run_with_cache(chunk, names_filter="blocks.0.hook_resid_post")
                out.append(cache["blocks.0.hook_resid_post"].reshape(-1, d_in))
        return torch.cat(out)[:n_tokens]
    raise ValueError(f"unknown activation source {source!r}; expected 'random' or 'tiny-model'")


def _sync() -> None:
    """GPU work is asynchronous: wait for it before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_benchmark(
    sae,
    activations: torch.Tensor,
    *,
    calib_tokens: int,
    train_tokens: int,
    rule: str = "wanda",
    sparsity: float = 0.5,
    batch_size: int = 4096,
    lr: float = 3e-4,
    repeat: int = 3,
    project_train_tokens: int = 100_000_000,
    project_calib_tokens: int = 262_144,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time prune (norms + prune) vs retrain of ``sae`` on ``activations [n, d_in]``.

    ``activations`` can be any tensor of rows; batches of ``batch_size`` are cut from it.
    """
    if activations.shape[0] < max(calib_tokens, train_tokens):
        raise ValueError(
            f"need {max(calib_tokens, train_tokens)} activation rows, got {activations.shape[0]}"
        )
    calib: list[torch.Tensor] = list(activations[:calib_tokens].split(batch_size))
    train_batches: Iterable[torch.Tensor] = list(activations[:train_tokens].split(batch_size))

    accumulate_sae_norms(sae, calib[:1])  # warm-up (allocations, first-call overheads)
    t_norms, norms = _time(lambda: accumulate_sae_norms(sae, calib), repeat)
    t_cut, (_, prune_report) = _time(lambda: prune_sae(sae, rule, sparsity, norms), repeat)
    t_prune = t_norms + t_cut
    t_norms_all, _ = _time(lambda: accumulate_sae_norms(sae, train_batches), 1)
    t_prune_all = t_norms_all + t_cut
    t_train, (_, train_report) = _time(
        lambda: train_sae(sae, train_batches, total_tokens=train_tokens, batch_size=batch_size, lr=lr,
                          seed=0, progress=False, device=device),
        1,
    )
    norm_rate = t_norms_all / train_tokens  # s per calibration token
    train_rate = t_train / train_report["tokens_used"]  # s per training token
    projected_prune = norm_rate * project_calib_tokens + t_cut
    projected_train = train_rate * project_train_tokens
    return {
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": getattr(sae.cfg, "k", None),
        "rule": rule,
        "sparsity": sparsity,
        "calib_tokens": calib_tokens,
        "train_tokens": train_report["tokens_used"],
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "device": device,
        "prune_s": t_prune,
        "prune_norms_s": t_norms,
        "prune_scoring_s": t_cut,
        "prune_all_tokens_s": t_prune_all,
        "retrain_s": t_train,
        "ratio_retrain_over_prune": t_train / t_prune,
        "ratio_equal_tokens": t_train / t_prune_all,
        "projected": {
            "calib_tokens": project_calib_tokens,
            "train_tokens": project_train_tokens,
            "prune_s": projected_prune,
            "retrain_s": projected_train,
            "ratio": projected_train / projected_prune,
        },
        "achieved_encoder_sparsity": prune_report["achieved_encoder_sparsity"],
        "retrain_final_mse": train_report["final_mse"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--architecture", choices=("standard", "topk", "jumprelu"), default="topk")
    p.add_argument("--k", type=int, default=32, help="TopK k (topk only)")
    p.add_argument("--tokens", type=int, default=65_536, help="retraining token budget (and activation rows)")
    p.add_argument("--calib-tokens", type=int, default=4096, help="pruning calibration tokens (first rows)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--rule", choices=("wanda", "paper", "magnitude"), default="wanda")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--source", choices=("random", "tiny-model"), default="random")
    p.add_argument("--activations", help="safetensors file or folder of shards with an 'activations' tensor")
    p.add_argument("--sae", help="benchmark this SAE (folder or release:<release>?id=<sae_id>)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="where the SAE and activations live, e.g. cuda (GPU path untested: no GPU here)")
    p.add_argument("--repeat", type=int, default=3, help="prune timing repeats (median)")
    p.add_argument("--project-train-tokens", type=int, default=100_000_000)
    p.add_argument("--project-calib-tokens", type=int, default=262_144)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    n_rows = max(args.tokens, args.calib_tokens)
    if args.sae:
        sae = load_sae(args.sae)
    if args.activations:
        acts = load_activation_files(args.activations, n_rows)
        d_in = acts.shape[1]
    else:
        d_in = sae.cfg.d_in if args.sae else args.d_in
        acts = make_activations(args.source, n_rows, d_in)
    if not args.sae:
        k = args.k if args.architecture == "topk" else None
        sae = new_sae(args.architecture, d_in, args.d_sae, "bench.hook", k=k, seed=0)

    sae, acts = sae.to(args.device), acts.to(args.device)
    result = run_benchmark(
        sae, acts, device=args.device, calib_tokens=args.calib_tokens, train_tokens=args.tokens, rule=args.rule,
        sparsity=args.sparsity, batch_size=args.batch_size, lr=args.lr, repeat=args.repeat,
        project_train_tokens=args.project_train_tokens, project_calib_tokens=args.project_calib_tokens,
    )
    if args.json:
        print(json.dumps(result))
        return result
    r, proj = result, result["projected"]
    print(
        f"SAE {r['architecture']} d_in={r['d_in']} d_sae={r['d_sae']} k={r['k']}  "
        f"rule={r['rule']} sparsity={r['sparsity']}  threads={r['threads']}  device={r['device']}"
    )
    print(
        f"  prune   (norms over {r['calib_tokens']:>9,} calib tokens + prune): {r['prune_s']:9.3f} s"
        f"  (norms {r['prune_norms_s']:.3f} s, scoring+masking {r['prune_scoring_s']:.3f} s)"
    )
    print(f"  prune   (norms over {r['train_tokens']:>9,} tokens, equal-token):   {r['prune_all_tokens_s']:9.3f} s")
    print(f"  retrain ({r['train_tokens']:>9,} tokens, sae-lens SAETrainer):       {r['retrain_s']:9.3f} s")
    print(f"  ratio retrain / prune:               {r['ratio_retrain_over_prune']:8.1f}x  (target >= 100x)")
    print(
        f"  per token: norm pass {1e6 * r['prune_all_tokens_s'] / r['train_tokens']:.1f} us, "
        f"training step {1e6 * r['retrain_s'] / r['train_tokens']:.1f} us  =>  ratio ~ "
        f"{r['ratio_equal_tokens']:.1f} x (train tokens / calib tokens)"
    )
    print(f"  ratio at equal tokens:               {r['ratio_equal_tokens']:8.1f}x")
    print(
        f"  projected ({proj['train_tokens']:,} train vs {proj['calib_tokens']:,} calib tokens, "
        f"from measured rates): {proj['ratio']:,.0f}x"
    )
    return result


if __name__ == "__main__":
    main()
