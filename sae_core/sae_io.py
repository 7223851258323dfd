"""Loading, saving, building and sanity-checking sae-lens SAEs.

Plain library code: no Prefect, no pickles.  SAEs are stored in sae-lens' own
folder format (``cfg.json`` + ``sae_weights.safetensors``) so that
``sae_lens.SAE.load_from_disk(folder)`` opens every folder written here.

Where things live in sae-lens 6 (needed for wiring):

* hook name: ``sae.cfg.metadata.hook_name`` (use :func:`sae_hook_name`);
  optional head index: ``sae.cfg.metadata.hook_head_index``.
* architecture string: ``sae.cfg.architecture()`` ("standard", "topk", "jumprelu").
* weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
  ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``.

SAE source syntax accepted by :func:`load_sae`:

* a local folder in sae-lens format, e.g. ``"runs/x/saes/original"``; or
* a pretrained release from sae-lens' registry, written
  ``"release:<release>?id=<sae_id>"``, e.g.
  ``"release:gpt2-small-resid-post-v5-32k?id=blocks.6.hook_resid_post"``,
  or given as :class:`SAESource` ``(release, sae_id)``.  Release and id are
  validated against sae-lens' ``pretrained_saes.yaml`` before any download.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import SAEMetadata, TrainingSAE

from sae_core.storage import check_safetensors_folder

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

__all__ = [
    "ARCHITECTURES",
    "RELEASE_PREFIX",
    "SAESource",
    "parse_sae_source",
    "validate_pretrained",
    "load_sae",
    "save_sae",
    "clone_sae",
    "decoder_norm_deviation",
    "new_sae",
    "sae_hook_name",
    "hook_activation_width",
    "check_sae_matches_hook",
    "flat_sae_inputs",
    "no_hook_z_reshaping",
]

#: Architectures this project supports (sae-lens architecture strings).
ARCHITECTURES: tuple[str, ...] = ("standard", "topk", "jumprelu")
RELEASE_PREFIX = "release:"

# Metadata keys copied from a reference SAE onto a fresh one (``new_sae(like=...)``):
# everything that says *where* the SAE reads activations and how the model is loaded.
_METADATA_KEYS_TO_COPY = (
    "hook_name",
    "hook_head_index",
    "model_name",
    "model_class_name",
    "model_from_pretrained_kwargs",
    "context_size",
    "prepend_bos",
    "seqpos_slice",
    "dataset_path",
)
# Inference-config fields copied from the reference SAE (besides d_in / d_sae).
_CFG_KEYS_TO_COPY = (
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "k",
    "rescale_acts_by_decoder_norm",
)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SAESource:
    """A pretrained SAE in sae-lens' registry: ``SAE.from_pretrained(release, sae_id)``."""

    release: str
    sae_id: str

    def __str__(self) -> str:
        return f"{RELEASE_PREFIX}{self.release}?id={self.sae_id}"

    @classmethod
    def parse(cls, text: str) -> SAESource:
        """Parse ``"release:<release>?id=<sae_id>"``; ValueError on anything else."""
        if not text.startswith(RELEASE_PREFIX):
            raise ValueError(
                f"SAE source {text!r} does not start with {RELEASE_PREFIX!r}; "
                f"expected '{RELEASE_PREFIX}<release>?id=<sae_id>'"
            )
        body = text[len(RELEASE_PREFIX) :]
        release, sep, sae_id = body.partition("?id=")
        if not sep or not release or not sae_id:
            raise ValueError(
                f"malformed SAE source {text!r}: expected "
                f"'{RELEASE_PREFIX}<release>?id=<sae_id>', e.g. "
                f"'{RELEASE_PREFIX}gpt2-small-resid-post-v5-32k?id=blocks.6.hook_resid_post'"
            )
        return cls(release=release, sae_id=sae_id)


def parse_sae_source(source: str | os.PathLike[str] | SAESource) -> SAESource | Path:
    """Return an :class:`SAESource` for registry references, else a local :class:`Path`."""
    if isinstance(source, SAESource):
        return source
    if isinstance(source, os.PathLike):
        return Path(source)
    if not isinstance(source, str) or not source:
        raise ValueError(f"SAE source must be a non-empty str, path or SAESource, got {source!r}")
    if source.startswith(RELEASE_PREFIX):
        return SAESource.parse(source)
    return Path(source)


def _close(word: str, options: list[str], n: int = 5) -> str:
    matches = difflib.get_close_matches(word, options, n=n, cutoff=0.5)
    return f" Close matches: {matches}." if matches else ""


def validate_pretrained(release: str, sae_id: str) -> None:
    """ValueError unless ``release`` and ``sae_id`` are in sae-lens' pretrained registry.

    Purely local (reads the ``pretrained_saes.yaml`` shipped with sae-lens);
    never touches the network.  Unlike ``SAE.from_pretrained`` we do not accept
    raw Hugging Face repo ids as releases.
    """
    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise ValueError(
            f"unknown SAE release {release!r}: not in sae-lens' pretrained registry "
            f"({len(directory)} releases).{_close(release, list(directory))}"
        )
    saes_map = directory[release].saes_map
    if sae_id not in saes_map:
        ids = list(saes_map)
        shown = ids[:8] + (["..."] if len(ids) > 8 else [])
        raise ValueError(
            f"unknown sae_id {sae_id!r} for release {release!r}.{_close(sae_id, ids)} "
            f"Valid ids include {shown}."
        )


# --------------------------------------------------------------------------- load/save


def load_sae(
    source: str | os.PathLike[str] | SAESource,
    device: str = "cpu",
    dtype: str | None = None,
) -> SAE[Any]:
    """Load an inference SAE from a local sae-lens folder or a pretrained release.

    ``source``: a folder path, ``"release:<release>?id=<sae_id>"`` or an
    :class:`SAESource`.  Registry references are validated (ValueError naming
    the bad release / id) before any download is attempted.  ``dtype=None``
    keeps the folder's dtype for local SAEs and uses float32 for releases.
    """
    parsed = parse_sae_source(source)
    if isinstance(parsed, SAESource):
        validate_pretrained(parsed.release, parsed.sae_id)
        try:
            return SAE.from_pretrained(
                parsed.release, parsed.sae_id, device=device, dtype=dtype or "float32"
            )
        except Exception as exc:  # network / hub / conversion errors
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = " (HF_HUB_OFFLINE is set and the files are not cached)" if offline else ""
            raise RuntimeError(
                f"could not load pretrained SAE {parsed}{hint}: {type(exc).__name__}: {exc}"
            ) from exc

    folder = parsed
    if not folder.is_dir():
        raise ValueError(
            f"SAE folder {str(folder)!r} does not exist (and is not a "
            f"'{RELEASE_PREFIX}<release>?id=<sae_id>' reference)"
        )
    missing = [n for n in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME) if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"SAE folder {str(folder)!r} is missing {missing}; not a sae-lens SAE folder")
    check_safetensors_folder(folder)
    return SAE.load_from_disk(folder, device=device, dtype=dtype)


def save_sae(sae: SAE[Any], folder: str | os.PathLike[str]) -> Path:
    """Save ``sae`` in sae-lens folder format; ``SAE.load_from_disk(folder)`` reopens it.

    Training SAEs are saved as their inference counterpart
    (``TrainingSAE.save_inference_model``), so the folder always loads as an
    inference ``SAE``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(sae, TrainingSAE):
        sae.save_inference_model(folder)
    else:
        sae.save_model(folder)
    return folder


def clone_sae(sae: SAE[Any]) -> SAE[Any]:
    """An independent copy of ``sae`` (same class, config and weights).

    Built from the config rather than with ``copy.deepcopy``: sae-lens keeps
    closures over ``self`` for activation normalisation, which deepcopy would
    share with the original.
    """
    cfg = copy.deepcopy(sae.cfg)
    device = cfg.device
    cfg.device = "meta"  # allocate nothing, then assign cloned tensors
    new = type(sae)(cfg)
    new.cfg.device = device
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    new.load_state_dict(state, assign=True)
    new.device = sae.device
    new.dtype = sae.dtype
    new._use_error_term = sae._use_error_term
    new.train(sae.training)
    return new


@torch.no_grad()
def decoder_norm_deviation(sae: SAE[Any]) -> float:
    """``max_j | ||W_dec[j]|| - 1 |`` in float32: 0 when every decoder row has unit norm.

    SAEBench assumes unit-norm decoder rows (its ``check_decoder_norms`` warns
    above 1e-5 in float32); every SAE this project trains or prunes meets it.
    """
    return float((sae.W_dec.detach().float().norm(dim=-1) - 1.0).abs().max().item())


# --------------------------------------------------------------------------- building


def sae_hook_name(sae: SAE[Any]) -> str | None:
    """The model hook an SAE reads from (``sae.cfg.metadata.hook_name`` in sae-lens 6)."""
    return sae.cfg.metadata.hook_name


def _architecture(sae: SAE[Any]) -> str:
    return sae.cfg.architecture()


def new_sae(
    architecture: str | None = None,
    d_in: int | None = None,
    d_sae: int | None = None,
    hook_name: str | None = None,
    *,
    k: int | None = None,
    like: SAE[Any] | None = None,
    training: bool = False,
    seed: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    **cfg_overrides: Any,
) -> SAE[Any]:
    """Build an untrained SAE, optionally shaped exactly like an existing one.

    With ``like=sae``: architecture, d_in, d_sae, k, hook metadata
    (hook_name, hook_head_index, model name, ...), ``apply_b_dec_to_input``,
    ``normalize_activations``, ``reshape_activations`` and (TopK)
    ``rescale_acts_by_decoder_norm`` are copied; explicit arguments win.

    ``training=True`` returns the matching sae-lens *training* class
    (``StandardTrainingSAE`` / ``TopKTrainingSAE`` / ``JumpReLUTrainingSAE``);
    ``cfg_overrides`` may then set training fields such as ``l1_coefficient``,
    ``l0_coefficient``, ``jumprelu_init_threshold`` or ``decoder_init_norm``.
    Unknown override names raise ValueError.  Weights use sae-lens' own
    initialisation; ``seed`` makes it reproducible without touching the
    global RNG.
    """
    ref_cfg: dict[str, Any] = {}
    ref_meta: dict[str, Any] = {}
    if like is not None:
        if not isinstance(like, SAE):
            raise ValueError(f"like= must be a sae-lens SAE, got {type(like).__name__}")
        ref_cfg = {"d_in": like.cfg.d_in, "d_sae": like.cfg.d_sae}
        for key in _CFG_KEYS_TO_COPY:
            if hasattr(like.cfg, key):
                ref_cfg[key] = copy.deepcopy(getattr(like.cfg, key))
        for key in _METADATA_KEYS_TO_COPY:
            if key in like.cfg.metadata:
                ref_meta[key] = copy.deepcopy(like.cfg.metadata[key])
        architecture = architecture or _architecture(like)
        dtype = dtype or like.cfg.dtype
        device = device or like.cfg.device

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {architecture!r}; expected one of {ARCHITECTURES}")
    d_in = d_in if d_in is not None else ref_cfg.get("d_in")
    d_sae = d_sae if d_sae is not None else ref_cfg.get("d_sae")
    for name, value in (("d_in", d_in), ("d_sae", d_sae)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hook_name is not None:
        ref_meta["hook_name"] = hook_name
        if like is not None and hook_name != sae_hook_name(like):
            ref_meta.pop("hook_head_index", None)

    values: dict[str, Any] = {k_: v for k_, v in ref_cfg.items() if k_ not in ("d_in", "d_sae")}
    values.update(d_in=d_in, d_sae=d_sae, dtype=dtype or "float32", device=device or "cpu")
    if architecture == "topk":
        k = k if k is not None else values.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= d_sae:
            raise ValueError(f"topk SAE needs an int k with 0 < k <= d_sae={d_sae}, got k={k!r}")
        values["k"] = k
    elif k is not None:
        raise ValueError(f"k={k!r} only applies to 'topk' SAEs, not {architecture!r}")
    values.update(cfg_overrides)

    sae_cls, cfg_cls = (get_sae_training_class if training else get_sae_class)(architecture)
    valid = {f.name for f in fields(cfg_cls)} - {"metadata"}
    unknown_overrides = sorted(set(cfg_overrides) - valid)
    if unknown_overrides:
        raise ValueError(
            f"unknown config field(s) {unknown_overrides} for {cfg_cls.__name__}; valid: {sorted(valid)}"
        )
    # Copied keys may not exist on the target class (e.g. rescale flag on inference-only cfgs).
    values = {k_: v for k_, v in values.items() if k_ in valid}
    cfg = cfg_cls(**values, metadata=SAEMetadata(**ref_meta))

    if seed is None:
        return sae_cls(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sae_cls(cfg)


# --------------------------------------------------------------------------- hooks


def hook_activation_width(model: HookedTransformer, hook_name: str) -> tuple[int, ...]:
    """Per-token shape of the activation at ``hook_name`` (e.g. ``(d_model,)`` or ``(n_heads, d_head)``).

    Runs the model on a single token; ValueError naming the hook if the
    model has no such hook point or the hook never fires.
    """
    if hook_name not in model.hook_dict:
        raise ValueError(
            f"hook {hook_name!r} is not a hook point of the model.{_close(hook_name, list(model.hook_dict))}"
        )
    device = getattr(model.cfg, "device", None) or "cpu"
    tokens = torch.zeros((1, 1), dtype=torch.long, device=device)
    seen: dict[str, tuple[int, ...]] = {}

    def grab(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
        seen["shape"] = tuple(activation.shape[2:])
        raise _StopForward  # nothing after this hook is needed

    try:
        with torch.no_grad():
            model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(hook_name, grab)])
    except _StopForward:
        pass
    if "shape" not in seen:
        raise ValueError(
            f"hook {hook_name!r} exists but did not fire on a forward pass "
            f"(e.g. hook_result needs use_attn_result=True)"
        )
    return seen["shape"]


class _StopForward(Exception):
    pass


def check_sae_matches_hook(
    sae: SAE[Any],
    model: HookedTransformer,
    hook_name: str | None = None,
    *,
    allow_other_hook: bool = False,
) -> int:
    """Check that ``sae`` can read the activation at ``hook_name``; return the SAE input width.

    ``hook_name`` defaults to the SAE's own ``cfg.metadata.hook_name``.  If
    both are set and differ, ValueError unless ``allow_other_hook=True``.
    Handles ``hook_z`` SAEs (``reshape_activations="hook_z"``, width
    ``n_heads*d_head``) and single-head SAEs (``metadata.hook_head_index``).
    """
    own = sae_hook_name(sae)
    hook_name = hook_name or own
    if hook_name is None:
        raise ValueError("no hook_name given and the SAE has no cfg.metadata.hook_name")
    if own is not None and own != hook_name and not allow_other_hook:
        raise ValueError(
            f"SAE was trained on hook {own!r} but is being applied at {hook_name!r} "
            f"(pass allow_other_hook=True if intended)"
        )
    shape = hook_activation_width(model, hook_name)
    head_index = sae.cfg.metadata.hook_head_index
    if sae.cfg.reshape_activations == "hook_z":
        if len(shape) != 2:
            raise ValueError(f"SAE reshapes hook_z activations but hook {hook_name!r} has per-token shape {shape}")
        width = shape[0] * shape[1]
    elif head_index is not None:
        if len(shape) != 2 or not 0 <= head_index < shape[0]:
            raise ValueError(
                f"SAE reads head {head_index} of hook {hook_name!r}, whose per-token shape is {shape}"
            )
        width = shape[1]
    else:
        if len(shape) != 1:
            raise ValueError(
                f"hook {hook_name!r} has per-token shape {shape}; the SAE needs "
                f"reshape_activations='hook_z' or metadata.hook_head_index to read it"
            )
        width = shape[0]
    if sae.cfg.d_in != width:
        raise ValueError(
            f"SAE d_in={sae.cfg.d_in} does not match the width {width} of hook {hook_name!r}"
        )
    return width


# --------------------------------------------------------------------------- helpers


@contextmanager
def no_hook_z_reshaping(sae: SAE[Any]) -> Iterator[SAE[Any]]:
    """Temporarily make a hook_z SAE accept flat ``[..., d_in]`` input."""
    was_on = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if was_on:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield sae
    finally:
        if was_on:
            sae.turn_on_forward_pass_hook_z_reshaping()


def flat_sae_inputs(sae: SAE[Any], batch: torch.Tensor) -> torch.Tensor:
    """Reshape an activation batch to ``[n_tokens, d_in]`` for ``sae``.

    Accepts ``[..., d_in]`` and, for hook_z SAEs, ``[..., n_heads, d_head]``.
    ValueError naming the shape otherwise.
    """
    if not isinstance(batch, torch.Tensor):
        raise ValueError(f"activation batch must be a torch.Tensor, got {type(batch).__name__}")
    d_in = sae.cfg.d_in
    if batch.dim() >= 1 and batch.shape[-1] == d_in:
        return batch.reshape(-1, d_in)
    if (
        sae.cfg.reshape_activations == "hook_z"
        and batch.dim() >= 2
        and batch.shape[-1] * batch.shape[-2] == d_in
    ):
        return batch.reshape(-1, d_in)
    raise ValueError(
        f"activation batch of shape {tuple(batch.shape)} does not fit an SAE with d_in={d_in} "
        f"(expected [..., {d_in}])"
    )
