import pytest


@pytest.fixture
def tmp_store(tmp_path, monkeypatch):
    """Point the results store and checkpoints at a temporary directory."""
    monkeypatch.setenv("RANK1_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path / "ckpt"))
    return tmp_path

