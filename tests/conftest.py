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
