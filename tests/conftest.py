import pytest


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded Gemma 3 270M in float32; the first run on a machine builds the dequantized cache."""
    from decoding.model import load_model

    return load_model()
