"""Prune an SAE's encoder and decoder weights (the "pruned" SAE variant).

Only ``W_enc [d_in, d_sae]`` and ``W_dec [d_sae, d_in]`` are pruned (the rules
below pick which weights are zeroed); the original SAE is never modified.
Pruning shortens decoder rows, so the pruned SAE is then brought back to
unit-norm decoder rows (as SAEBench assumes) by two exact steps:

1. *Switch off latents that decode to nothing.*  A latent whose decoder row
   was pruned to all zeros contributes nothing to any reconstruction, yet it
   would still fire, count towards L0, feed SAEBench's activation-based
   metrics and (TopK) take one of the k slots from a latent that does
   decode.  Its encoder column and ``b_enc`` entry are set to 0, so its
   pre-activation is exactly 0 for every input and it is never active
   (ReLU / JumpReLU give 0; TopK scores it 0, so it never displaces a latent
   with a positive pre-activation and reads 0 whenever it fills a slot no
   positive latent wanted).  Its decoder row gets the latent's original
   direction at unit norm: the row only ever multiplies a zero activation,
   so the function is unchanged, and SAEBench's unit-norm check holds.
   (wanda zeroes the whole row of every latent that never fired on the
   calibration set; paper never zeroes a whole row.)
2. *Fold decoder-row norms into the encoder* with sae-lens'
   ``fold_W_dec_norm``: row ``j`` of ``W_dec`` is divided by its norm
   ``n_j``, column ``j`` of ``W_enc``, ``b_enc[j]`` and (JumpReLU)
   ``threshold[j]`` are multiplied by it.  Exact for ReLU and JumpReLU,
   which commute with positive per-latent scaling.  For TopK folding is
   exact only under sae-lens' ``rescale_acts_by_decoder_norm`` semantics
   (select the k largest ``pre_j * n_j``, decode with unit rows); the pruned
   TopK SAE adopts them (the flag is set on its config).  This is the
   principled choice: ``pre_j * n_j`` is the size of latent j's contribution
   to the reconstruction, so TopK keeps choosing the k largest
   contributions; it is the semantics sae-lens trains TopK SAEs with (and
   this project's trained TopK SAEs carry the flag); for a unit-norm
   original SAE it is the original function; and it never spends a slot on
   a shortened-to-nothing row.  A TopK original *without* the flag and with
   non-unit rows selected on raw pre-activations, so its pruned copy selects
   differently from plain masking; a warning and a note say so.

So kept weights equal the original's times a per-latent factor (``n_j`` in
``W_enc`` column ``j`` and ``b_enc[j]`` / ``threshold[j]``, ``1 / n_j`` in
``W_dec`` row ``j``, ``n_j`` the norm of the masked row); the zero pattern is
exactly the mask (plus whole encoder columns of switched-off latents, minus
their restored decoder rows); ``b_dec`` is untouched.  What was done is in
the report and ``cfg.metadata.sae_transfer_pruning``: ``decoder_rows``,
``topk_selection``, ``switched_off_latents``, ``decoder_norm_max_deviation``.

Rules (``n`` = number of weights zeroed per comparison group,
``int(sparsity * group_size)``, lowest scores first, ties broken by index; the
selection is :func:`sae_core.compression.masks.prune_mask` with ``rounding="floor"``):

``wanda`` (canonical WANDA, input-side; Sun et al. 2023 applied to the SAE's
two linear maps)
    encoder ``S[i, j] = |W_enc[i, j]| * ||x_i||`` where ``x`` is the SAE input
    *as the encoder sees it* (after dtype cast, activation normalisation and
    ``- b_dec`` when ``apply_b_dec_to_input``), compared within each latent
    ``j`` (a column of W_enc: each latent keeps its best inputs).
    decoder ``S[j, i] = |W_dec[j, i]| * ||f_j||`` where ``f`` is what the
    decoder multiplies (the latent activations; for TopK SAEs with
    ``rescale_acts_by_decoder_norm`` the rescaled activations), compared within
    each output dimension ``i`` (a column of W_dec).

``paper`` (the output-side rule in the published SAE-pruning code, kept for
comparison; NOT canonical WANDA)
    encoder ``S[i, j] = |W_enc[i, j]| * ||pre_j||`` with ``pre = x @ W_enc + b_enc``
    the encoder's pre-activations, compared within each input dimension ``i``
    (a row of W_enc); decoder ``S[j, i] = |W_dec[j, i]| * ||xhat_i||`` with
    ``xhat = f @ W_dec + b_dec`` the reconstruction (before any output
    de-normalisation), compared within each latent ``j`` (a row of W_dec).

``magnitude``
    ``|W|`` with one threshold per whole matrix.

Norms are ``sqrt`` of float32 sums of squares accumulated over *all*
calibration tokens (:func:`accumulate_sae_norms`), not means of per-batch norms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from sae_lens import SAE

from sae_core.compression.masks import prune_mask
from sae_core.sae_io import ARCHITECTURES, clone_sae, decoder_norm_deviation, flat_sae_inputs, no_hook_z_reshaping
from sae_core.sae_prune_rules import GROUPS, NORM_RULES, RULES

__all__ = ["RULES", "SAENorms", "accumulate_sae_norms", "prune_sae", "prune_masks"]


@dataclass
class SAENorms:
    """Float32 sums of squares over all calibration tokens (sqrt taken at scoring)."""

    input_sq: torch.Tensor  # [d_in]   sum_t x[t, i]^2, x = encoder input
    latent_sq: torch.Tensor  # [d_sae] sum_t f[t, j]^2, f = decoder input
    preact_sq: torch.Tensor  # [d_sae] sum_t pre[t, j]^2, pre = x @ W_enc + b_enc
    recon_sq: torch.Tensor  # [d_in]   sum_t xhat[t, i]^2, xhat = f @ W_dec + b_dec
    n_tokens: int

    @classmethod
    def zeros(cls, d_in: int, d_sae: int, device: torch.device | str = "cpu") -> SAENorms:
        z = lambda n: torch.zeros(n, dtype=torch.float32, device=device)  # noqa: E731
        return cls(z(d_in), z(d_sae), z(d_sae), z(d_in), 0)

    @property
    def d_in(self) -> int:
        return int(self.input_sq.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.latent_sq.shape[0])

    def norms(self) -> dict[str, torch.Tensor]:
        """L2 norms over the calibration set (sqrt of the sums of squares)."""
        return {
            "input": self.input_sq.sqrt(),
            "latent": self.latent_sq.sqrt(),
            "preact": self.preact_sq.sqrt(),
            "recon": self.recon_sq.sqrt(),
        }

    def merge(self, other: SAENorms) -> SAENorms:
        """Combine two accumulations (e.g. two shards of the calibration set)."""
        if (self.d_in, self.d_sae) != (other.d_in, other.d_sae):
            raise ValueError(
                f"cannot merge SAENorms of sizes (d_in={self.d_in}, d_sae={self.d_sae}) and "
                f"(d_in={other.d_in}, d_sae={other.d_sae})"
            )
        return SAENorms(
            self.input_sq + other.input_sq.to(self.input_sq.device),
            self.latent_sq + other.latent_sq.to(self.latent_sq.device),
            self.preact_sq + other.preact_sq.to(self.preact_sq.device),
            self.recon_sq + other.recon_sq.to(self.recon_sq.device),
            self.n_tokens + other.n_tokens,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly); ``n_tokens`` stored as an int64 scalar tensor."""
        return {
            "input_sq": self.input_sq.contiguous(),
            "latent_sq": self.latent_sq.contiguous(),
            "preact_sq": self.preact_sq.contiguous(),
            "recon_sq": self.recon_sq.contiguous(),
            "n_tokens": torch.tensor(self.n_tokens, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SAENorms:
        return cls(
            state["input_sq"].float(),
            state["latent_sq"].float(),
            state["preact_sq"].float(),
            state["recon_sq"].float(),
            int(state["n_tokens"].item()),
        )


def _check_supported(sae: SAE[Any]) -> None:
    if not isinstance(sae, SAE):
        raise ValueError(f"expected a sae-lens SAE, got {type(sae).__name__}")
    arch = sae.cfg.architecture()
    if arch not in ARCHITECTURES:
        raise ValueError(f"pruning supports SAE architectures {ARCHITECTURES}, not {arch!r}")
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    if tuple(sae.W_enc.shape) != (d_in, d_sae) or tuple(sae.W_dec.shape) != (d_sae, d_in):
        raise ValueError(
            f"unexpected SAE weight shapes W_enc {tuple(sae.W_enc.shape)}, W_dec {tuple(sae.W_dec.shape)} "
            f"for d_in={d_in}, d_sae={d_sae}"
        )


def _decoder_input(sae: SAE[Any], feature_acts: torch.Tensor) -> torch.Tensor:
    """What the decoder matrix actually multiplies (TopK may rescale by decoder norms)."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return feature_acts / sae.W_dec.norm(dim=-1)
    return feature_acts


@torch.no_grad()
def accumulate_sae_norms(sae: SAE[Any], activation_batches: Iterable[torch.Tensor]) -> SAENorms:
    """Accumulate the calibration statistics needed by the ``wanda`` and ``paper`` rules.

    ``activation_batches`` yields raw hook activations ``[..., d_in]`` (for
    hook_z SAEs also ``[..., n_heads, d_head]``), e.g. batches from the
    activation cache of the model the SAE is being pruned for.  Sums of
    squares are accumulated in float32 over every token.
    """
    _check_supported(sae)
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    acc = SAENorms.zeros(d_in, d_sae, device=sae.device)
    captured: dict[str, torch.Tensor] = {}

    def capture_pre(tensor: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
        captured["pre"] = tensor  # x @ W_enc + b_enc, before the activation function

    with no_hook_z_reshaping(sae), sae.hooks(fwd_hooks=[("hook_sae_acts_pre", capture_pre)]):
        for batch in activation_batches:
            x = flat_sae_inputs(sae, batch).to(sae.device)
            if x.shape[0] == 0:
                continue
            sae_in = sae.process_sae_in(x)  # what W_enc multiplies (elementwise, cheap)
            feats = sae.encode(x)
            pre = captured.pop("pre")
            dec_in = _decoder_input(sae, feats)  # what W_dec multiplies
            recon = dec_in @ sae.W_dec + sae.b_dec
            acc.input_sq += sae_in.float().pow(2).sum(0)
            acc.preact_sq += pre.float().pow(2).sum(0)
            acc.latent_sq += dec_in.float().pow(2).sum(0)
            acc.recon_sq += recon.float().pow(2).sum(0)
            acc.n_tokens += int(x.shape[0])
    if acc.n_tokens == 0:
        raise ValueError("accumulate_sae_norms got no activations (empty calibration set)")
    return acc


def _validate(rule: str, sparsity: float, norms: SAENorms | None, sae: SAE[Any]) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown pruning rule {rule!r}; expected one of {RULES}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
    if not (0.0 <= float(sparsity) < 1.0) or math.isnan(float(sparsity)):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if rule in NORM_RULES:
        if norms is None:
            raise ValueError(
                f"rule {rule!r} needs calibration norms: pass norms=accumulate_sae_norms(sae, batches)"
            )
        if not isinstance(norms, SAENorms):
            raise ValueError(f"norms must be SAENorms, got {type(norms).__name__}")
        if (norms.d_in, norms.d_sae) != (sae.cfg.d_in, sae.cfg.d_sae):
            raise ValueError(
                f"norms were accumulated for d_in={norms.d_in}, d_sae={norms.d_sae} but the SAE has "
                f"d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}"
            )
        if norms.n_tokens <= 0:
            raise ValueError(f"norms have n_tokens={norms.n_tokens}; accumulate over some activations first")


#: ``dim`` compared within (a rule's group) -> ``prune_mask``'s ``per``
_PER = {None: "matrix", 0: "column", 1: "row"}


def _mask_lowest(scores: torch.Tensor, sparsity: float, dim: int | None) -> torch.Tensor:
    """Bool mask (True = prune) of the ``int(sparsity * group)`` lowest scores per group.

    ``dim`` is the axis compared within (``None``: whole matrix); ties resolve by index (lower
    first), so exactly that many weights are zeroed. The selection is
    :func:`sae_core.compression.masks.prune_mask`'s, with the SAE-pruning rounding (``"floor"``).
    """
    return prune_mask(scores, sparsity, per=_PER[dim], rounding="floor")


@torch.no_grad()
def prune_masks(
    sae: SAE[Any], rule: str, sparsity: float, norms: SAENorms | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (True = zero this weight) for W_enc and W_dec under ``rule``."""
    _check_supported(sae)
    _validate(rule, sparsity, norms, sae)
    sparsity = float(sparsity)
    w_enc = sae.W_enc.detach().float().abs()
    w_dec = sae.W_dec.detach().float().abs()
    if rule == "magnitude":
        return _mask_lowest(w_enc, sparsity, None), _mask_lowest(w_dec, sparsity, None)
    assert norms is not None
    dev = w_enc.device
    n = {k: v.to(dev) for k, v in norms.norms().items()}
    if rule == "wanda":
        enc_scores = w_enc * n["input"][:, None]  # [d_in, d_sae]
        dec_scores = w_dec * n["latent"][:, None]  # [d_sae, d_in]
        return _mask_lowest(enc_scores, sparsity, 0), _mask_lowest(dec_scores, sparsity, 0)
    # paper (output-side)
    enc_scores = w_enc * n["preact"][None, :]
    dec_scores = w_dec * n["recon"][None, :]
    return _mask_lowest(enc_scores, sparsity, 1), _mask_lowest(dec_scores, sparsity, 1)


@torch.no_grad()
def prune_sae(
    sae: SAE[Any], rule: str, sparsity: float, norms: SAENorms | None = None
) -> tuple[SAE[Any], dict[str, Any]]:
    """Return ``(pruned copy of sae, report)``; ``sae`` itself is not modified.

    ``rule``: "wanda" | "paper" | "magnitude"; ``sparsity`` in [0, 1);
    ``norms`` from :func:`accumulate_sae_norms` (required for wanda / paper,
    ignored for magnitude).  The copy has unit-norm decoder rows (see the
    module docstring for the two exact steps).  The report is
    JSON-serialisable and is also stored in the copy's
    ``cfg.metadata.sae_transfer_pruning`` so it travels with the saved
    folder.  Report keys: rule, sparsity (asked), achieved_sparsity (zeros
    over both matrices, a switched-off latent's restored decoder row counted
    as zeros since it only ever multiplies zero), achieved_encoder_sparsity,
    achieved_decoder_sparsity, n_encoder_pruned, n_decoder_pruned,
    encoder_group, decoder_group, calibration_tokens, architecture, d_in,
    d_sae, decoder_rows, topk_selection (TopK only), switched_off_latents,
    decoder_norm_max_deviation, notes.
    """
    _check_supported(sae)
    _validate(rule, sparsity, norms, sae)  # before any work
    enc_mask, dec_mask = prune_masks(sae, rule, sparsity, norms)

    pruned = clone_sae(sae)
    pruned.W_enc.data.masked_fill_(enc_mask, 0.0)
    pruned.W_dec.data.masked_fill_(dec_mask, 0.0)
    dec_zero = pruned.W_dec == 0  # before rows of switched-off latents are restored

    notes: list[str] = []
    switched_off = _unit_norm_decoder(pruned, sae, notes)
    enc_zero = pruned.W_enc == 0

    report: dict[str, Any] = {
        "rule": rule,
        "sparsity": float(sparsity),
        "achieved_sparsity": float(
            (enc_zero.sum() + dec_zero.sum()).item() / (pruned.W_enc.numel() + pruned.W_dec.numel())
        ),
        "achieved_encoder_sparsity": float(enc_zero.float().mean().item()),
        "achieved_decoder_sparsity": float(dec_zero.float().mean().item()),
        "n_encoder_pruned": int(enc_mask.sum().item()),
        "n_decoder_pruned": int(dec_mask.sum().item()),
        "encoder_group": GROUPS[rule][0],
        "decoder_group": GROUPS[rule][1],
        "calibration_tokens": int(norms.n_tokens) if (norms is not None and rule in NORM_RULES) else 0,
        "architecture": sae.cfg.architecture(),
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "decoder_rows": "unit norm: zero rows switched off, norms folded into the encoder",
        **({"topk_selection": TOPK_SELECTION} if sae.cfg.architecture() == "topk" else {}),
        "switched_off_latents": switched_off,
        "decoder_norm_max_deviation": decoder_norm_deviation(pruned),
        "notes": notes,
    }
    pruned.cfg.metadata.sae_transfer_pruning = dict(report)
    return pruned, report


TOPK_SELECTION = "k largest pre-activation x decoder-row norm (sae-lens rescale_acts_by_decoder_norm), stored folded"


def _unit_norm_decoder(pruned: SAE[Any], original: SAE[Any], notes: list[str]) -> int:
    """Switch off zero-row latents and fold decoder-row norms into the encoder, in place.

    Returns the number of switched-off latents.  See the module docstring.
    Called under :func:`prune_sae`'s ``no_grad``.
    """
    row_norms = pruned.W_dec.detach().float().norm(dim=-1)
    off = row_norms == 0
    n_off = int(off.sum().item())
    if n_off:
        pruned.W_enc.data[:, off] = 0.0
        pruned.b_enc.data[off] = 0.0
        rows = original.W_dec.detach()[off].float()
        norms = rows.norm(dim=-1, keepdim=True)
        # an original row that was itself zero gets a basis vector (any unit vector would do)
        basis = torch.nn.functional.one_hot(
            off.nonzero().squeeze(1) % pruned.cfg.d_in, pruned.cfg.d_in
        ).to(rows)
        pruned.W_dec.data[off] = torch.where(norms > 0, rows / norms.clamp(min=1e-30), basis).to(pruned.W_dec.dtype)
        notes.append(f"{n_off} latent(s) had their whole decoder row pruned: switched off (never active)")
    if pruned.cfg.architecture() == "topk":
        if not getattr(original.cfg, "rescale_acts_by_decoder_norm", False) and decoder_norm_deviation(original) > 1e-4:
            notes.append(
                "original TopK SAE selects on raw pre-activations with non-unit decoder rows; the pruned copy "
                "selects on pre-activation x decoder-row norm (rescale_acts_by_decoder_norm), so its TopK "
                "choice differs from plain masking"
            )
            warnings.warn(notes[-1], stacklevel=4)  # the caller of prune_sae
        pruned.cfg.rescale_acts_by_decoder_norm = True  # the semantics under which folding is exact
    pruned.fold_W_dec_norm()
    return n_off
