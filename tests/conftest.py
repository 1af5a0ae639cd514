import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path, monkeypatch):
    """Each test gets its own edit journal, never the user's."""
    monkeypatch.setenv("RETAIN_STATE_DIR", str(tmp_path / "state"))
