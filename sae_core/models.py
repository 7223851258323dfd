"""Load a causal LM once and expose it in the two forms the pipeline needs.

- the Hugging Face model (WANDA pruning, RAVEL), and
- a TransformerLens ``HookedTransformer`` built from the *same in-memory weights*
  (sae-lens and sae-bench need it), with the weight processing an SAE expects.

A model is named by a hub id (``gpt2``, ``google/gemma-2-2b``), a local HF folder, or a packaged
model (``gemma-3-270m``, see :mod:`sae_core.model_sources`; the flow dequantizes it into a folder
first). A local folder never touches the network. A folder whose ``config.json`` names a
``transformer_lens_name`` is wrapped by TransformerLens under that official name (weights still
from the folder), for architectures TransformerLens will not build from a local config.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_core.storage import check_safetensors_folder

# TransformerLens' own defaults for from_pretrained; SAEs record overrides of these
# (sae-lens: ``model_from_pretrained_kwargs``, e.g. OpenAI GPT-2 SAEs want center_writing_weights=False).
DEFAULT_PROCESSING: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}
PROCESSING_KEYS = frozenset(DEFAULT_PROCESSING) | {"refactor_factored_attn_matrices"}


class ModelNotFound(ValueError):
    pass


@dataclass
class LoadedModel:
    name: str
    hf_model: Any
    tokenizer: Any
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    _hooked_cache: dict = field(default_factory=dict, repr=False)

    def hooked(self, processing: dict[str, bool] | None = None):
        """The HookedTransformer form with the given weight processing (cached per processing)."""
        processing = resolve_processing(processing)
        key = tuple(sorted(processing.items()))
        if key not in self._hooked_cache:
            self._hooked_cache[key] = to_hooked_transformer(self.hf_model, self.tokenizer, self.name, processing, self.device)
        return self._hooked_cache[key]


def resolve_processing(processing: dict[str, Any] | None) -> dict[str, bool]:
    processing = dict(processing or {})
    unknown = set(processing) - PROCESSING_KEYS
    if unknown:
        raise ValueError(f"unknown weight-processing option(s) {sorted(unknown)}; known: {sorted(PROCESSING_KEYS)}")
    return {**DEFAULT_PROCESSING, **{k: bool(v) for k, v in processing.items()}}


def is_local_model(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def check_model_reference(name_or_path: str) -> None:
    """Fail fast on a model reference that cannot be loaded, before anything heavy happens."""
    from sae_core.model_sources import is_packaged_model, package_identity

    if not name_or_path or not isinstance(name_or_path, str):
        raise ModelNotFound(f"model must be a hub id or a local folder, got {name_or_path!r}")
    if is_packaged_model(name_or_path):
        package_identity(name_or_path)  # installed and complete, or an error naming what to install
        return
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"model folder {name_or_path!r} has no config.json; is it an HF model folder?")
        return
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotFound(f"model folder {name_or_path!r} does not exist")
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, make_model_alias_map

    if name_or_path.lower() not in make_model_alias_map() and name_or_path not in OFFICIAL_MODEL_NAMES:
        raise ModelNotFound(
            f"unknown model {name_or_path!r}: not a local folder and not a TransformerLens-supported hub model "
            f"(e.g. 'gpt2', 'google/gemma-2-2b')"
        )


def model_layer_count(name_or_path: str) -> int:
    """The number of transformer blocks of a model, from its config alone (no weights are loaded).

    Local folders: their config.json. Hub ids: TransformerLens' table (Gemma, Llama, ...: no
    download at all) or the repo's config.json (GPT-2: one small file, from the local cache offline).
    """
    if is_local_model(name_or_path):
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(name_or_path, local_files_only=True).num_hidden_layers)
    from transformer_lens import loading_from_pretrained as loading

    return int(loading.convert_hf_model_config(name_or_path)["n_layers"])


def check_hooks_exist(name_or_path: str, hook_names: list[str]) -> None:
    """Fail fast on ``blocks.<layer>.*`` hooks past the model's last block, before anything heavy happens
    (skipped when the config cannot be read without a download, e.g. offline and not cached)."""
    layers = {int(h.split(".")[1]) for h in hook_names if h.startswith("blocks.") and h.split(".")[1].isdigit()}
    if not layers:
        return
    try:
        n_layers = model_layer_count(name_or_path)
    except OSError:  # config.json neither cached nor reachable: the model load will say so
        return
    missing = sorted(h for h in hook_names if h.startswith("blocks.") and int(h.split(".")[1]) >= n_layers)
    if missing:
        raise ValueError(f"model {name_or_path!r} has no hook(s) {missing}: it has {n_layers} blocks (layers 0..{n_layers - 1})")


def load_language_model(name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The HF model + tokenizer; the hooked form is built lazily from the same weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_reference(name_or_path)
    local = is_local_model(name_or_path)
    # safetensors only: a folder holding a pickled pytorch_model.bin is refused, never unpickled.
    kwargs = {"local_files_only": True, "use_safetensors": True} if local else {"use_safetensors": True}
    if local:
        check_safetensors_folder(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k != "use_safetensors"})
    hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs).to(device)
    hf_model.eval()
    if tokenizer.pad_token is None:  # sae-bench pads batches
        tokenizer.pad_token = tokenizer.eos_token
    name = str(Path(name_or_path).expanduser().resolve()) if local else name_or_path
    return LoadedModel(name=name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype)


# Architectures TransformerLens configures from its own table, by official model name, never from
# config.json: a local folder of one (a pruned Gemma 2) is configured from the official name of its
# family whose table matches the folder's width. Layer count and vocabulary always come from the
# loaded HF model (TransformerLens' ``first_n_layers`` and ``hf_cfg``), so a truncated checkpoint works too.
NAME_CONFIGURED_FAMILIES: dict[str, str] = {"Gemma2ForCausalLM": "google/gemma-2-"}


def tl_reference_name(hf_config, name_or_path: str) -> str | None:
    """The TransformerLens official name to configure ``name_or_path`` from; None: from its config.json."""
    if not is_local_model(name_or_path):
        return name_or_path
    architecture = (getattr(hf_config, "architectures", None) or [None])[0]
    family = NAME_CONFIGURED_FAMILIES.get(architecture)
    if family is None:
        return None
    from transformer_lens import loading_from_pretrained as loading

    wanted = (hf_config.hidden_size, hf_config.intermediate_size, hf_config.num_attention_heads)
    for official in loading.OFFICIAL_MODEL_NAMES:
        if official.startswith(family) and not official.endswith("-it"):
            table = loading.convert_hf_model_config(official)
            if (table["d_model"], table["d_mlp"], table["n_heads"]) == wanted:
                return official
    raise ModelNotFound(f"model folder {name_or_path!r} ({architecture}, width {wanted[0]}) matches no TransformerLens "
                        f"model of the {family}* family")


def to_hooked_transformer(hf_model, tokenizer, name_or_path: str, processing: dict[str, bool], device: str = "cpu"):
    """Build a HookedTransformer from ``hf_model``'s in-memory weights.

    TransformerLens reads only the *config* from ``name_or_path`` (a local folder's config.json,
    or its table for hub ids and name-configured families); weights come from ``hf_model``, so a
    pruned model stays pruned. ``from_pretrained`` also drops processing the architecture cannot
    take (e.g. ``center_unembed`` under Gemma 2's logit soft-cap).
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    from sae_core.model_sources import TL_NAME_KEY

    # An official TransformerLens name: recorded in the folder's config.json (packaged models, e.g. the
    # GGUF Gemma 3), a hub id, or the name-configured family a local folder belongs to (Gemma 2).
    reference = getattr(hf_model.config, TL_NAME_KEY, None) or tl_reference_name(hf_model.config, name_or_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TransformerBridge.*")
        if reference is not None:
            # TransformerLens takes the architecture from its own table (no hub access), the weights from hf_model.
            hooked = HookedTransformer.from_pretrained(
                reference, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype,
                first_n_layers=hf_model.config.num_hidden_layers, **processing
            )
        else:
            # from_pretrained insists on an official name; for a local folder, do its steps directly:
            # config from the folder's config.json, weights from the in-memory HF model.
            cfg = loading.get_pretrained_model_config(
                name_or_path, hf_cfg=hf_model.config.to_dict(), fold_ln=processing["fold_ln"], device=device,
                dtype=hf_model.dtype, local_files_only=True,
            )
            state_dict = loading.get_pretrained_state_dict(name_or_path, cfg, hf_model, dtype=hf_model.dtype)
            hooked = HookedTransformer(cfg, tokenizer, move_to_device=False)
            hooked.load_and_process_state_dict(state_dict, **processing)
            hooked.move_model_modules_to_device()
    hooked.eval()
    return hooked


def hook_names(hooked) -> list[str]:
    return sorted(hooked.hook_dict)


def check_hook(hooked, hook_name: str) -> None:
    if hook_name not in hooked.hook_dict:
        near = [h for h in hooked.hook_dict if h.split(".")[-1] == hook_name.split(".")[-1]][:6]
        raise ValueError(f"hook {hook_name!r} is not in model {hooked.cfg.model_name!r}; e.g. {near or hook_names(hooked)[:6]}")


def hook_width(hooked, hook_name: str) -> int:
    """Width of the activation at ``hook_name`` (flattened over heads for attn.hook_z)."""
    check_hook(hooked, hook_name)
    seen: dict[str, int] = {}

    def grab(activation, hook):
        seen["width"] = int(activation[0, 0].numel())
        raise _StopForward

    try:
        hooked.run_with_hooks(torch.zeros(1, 1, dtype=torch.long, device=hooked.cfg.device), fwd_hooks=[(hook_name, grab)])
    except _StopForward:
        pass
    return seen["width"]


class _StopForward(Exception):
    pass
