"""Held-out quality of the gradient-free SAE fixes on the toy preset: transfer vs the decoder refit
and the affine fix, with the old estimator (plain ridge least squares, ``shrink=0``) and the new one
(shrinkage towards the original decoder / identity map, chosen on held-back fitting tokens).

Pipeline (the toy preset's sizes): toy world -> dense activations at ``blocks.1.hook_resid_post``
(special tokens excluded) on ``toy-corpus:1`` -> TopK SAE (d_sae 512, k 16, 120k tokens, lr 3e-3,
batch 512) -> ``wanda:0.5`` copy calibrated on 64 ``toy-corpus:2`` windows -> compressed
activations on the same tokens. The fixes fit on the first ``--fit-tokens`` (30k, the preset's
``repair.n_tokens`` default) training-token activations; EV is measured on the ~12.6k tokens after the
training tokens (never seen by the SAE or the fits); identity = share of latents whose decoder
cosine with the original is > 0.9. "old" = ``shrink=0, affine_shrink=0`` (the previous estimator,
up to its 1e-6 ridge floor pulling towards the original instead of zero).

Example (about 3 minutes on 2 CPU cores the first time, the world is cached in --work):
    .venv/bin/python benchmarks/bench_repair_fixes.py --work /tmp/refit_bench
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOOK = "blocks.1.hook_resid_post"
SEQ = 128
TRAIN_TOKENS, HELD_OUT_TOKENS = 120_000, 16_000


def prepare(work: Path, seed: int) -> dict:
    """Dense and compressed activations on the same tokens, and the SAE trained on the dense ones (cached)."""
    from sae_lens import SAE

    from sae_core.activations import hook_activations, special_token_ids
    from sae_core.compression import compress_model
    from sae_core.datasets import pruning_windows, token_batch
    from sae_core.models import load_language_model
    from sae_core.sae_io import new_sae, save_sae
    from sae_core.sae_train import train_sae
    from sae_core.toy.world import ToyWorldConfig, build_toy_world

    data, sae_dir = work / "activations.pt", work / f"sae_seed{seed}"
    if not (work / "world/model/config.json").exists():
        build_toy_world(work / "world", ToyWorldConfig(seed=0, n_documents=12000, vocab_size=1024, n_layer=2,
                                                       d_model=128, n_head=4, n_ctx=128, train_steps=400), progress=False)
    if not data.exists():
        model = load_language_model(str(work / "world/model"))
        n_seq = (TRAIN_TOKENS + HELD_OUT_TOKENS) // (SEQ - 1) + 4
        tokens = token_batch(model.tokenizer, "toy-corpus:1", n_seq, SEQ)
        keep = ~torch.isin(tokens, torch.tensor(sorted(special_token_ids(model.tokenizer))))

        def acts(hooked) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([hook_activations(hooked, tokens[i:i + 16], HOOK)[keep[i:i + 16]]
                                  for i in range(0, n_seq, 16)])

        dense = acts(model.hooked(None))
        compressed_model = load_language_model(str(work / "world/model"))
        calibration, _ = pruning_windows(compressed_model.tokenizer, "toy-corpus:2", 64, 32, SEQ, 0)
        compress_model(compressed_model.hf_model, "wanda:0.5", calibration, module_groups=["attention", "mlp"],
                       progress=False)
        torch.save({"dense": dense, "compressed": acts(compressed_model.hooked(None))}, data)
    acts = torch.load(data)
    if not (sae_dir / "cfg.json").exists():
        blank = new_sae("topk", acts["dense"].shape[1], 512, HOOK, k=16, seed=seed)
        sae, _ = train_sae(blank, list(acts["dense"][:TRAIN_TOKENS].split(512)), TRAIN_TOKENS, lr=3e-3, batch_size=512,
                           seed=seed, progress=False)
        save_sae(sae, sae_dir)
    sae = SAE.load_from_disk(str(sae_dir))
    sae.eval()
    return {"sae": sae, **acts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench_repair_fixes", help="cache folder (toy world, activations, SAE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-tokens", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sae_core.sae_quality import reconstruction_stats
    from sae_core.variants import VariantInputs, build_variant, decoder_identity

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    d = prepare(work, args.seed)
    sae = d["sae"]
    fit_c, fit_d = d["compressed"][:args.fit_tokens], d["dense"][:args.fit_tokens]
    held = d["compressed"][TRAIN_TOKENS:]

    def row(name: str, variant, wall: float, note: str = "") -> None:
        ev = reconstruction_stats(variant, list(held.split(4096)))["explained_variance"]
        kept = decoder_identity(sae, variant)["kept_frac"]
        print(f"| {name:24s} | {ev:.4f} | {kept:.3f} | {wall:6.2f} | {note} |", flush=True)

    print(f"fit tokens {len(fit_c)}, held-out tokens {len(held)}; SAE d_sae {sae.cfg.d_sae}, k {sae.cfg.k}")
    print("| variant | held-out EV | identity (cos > 0.9) | wall s | chosen |")
    print("|---|---|---|---|---|")
    row("transfer", sae, 0.0)
    for spec in ("refit_decoder", "affine"):
        for label, options in (("old", {"shrink": 0.0, "affine_shrink": 0.0}), ("new", {})):
            inputs = VariantInputs(compressed=list(fit_c.split(4096)), dense=list(fit_d.split(4096)),
                                   n_tokens=args.fit_tokens, options={"ridge": 1e-6, **options})
            started = time.perf_counter()
            variant, report = build_variant(spec, sae, inputs)
            wall = time.perf_counter() - started
            det = report.details
            note = f"c={det['shrink']:g}, λ={det['lambda']:.3g}" + (
                f", map s={det['affine_shrink']:g}" if spec == "affine" else "")
            row(f"{spec} ({label})", variant, wall, note)


if __name__ == "__main__":
    main()
