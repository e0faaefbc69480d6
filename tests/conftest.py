import pytest


@pytest.fixture
def tmp_store(tmp_path, monkeypatch):
    """Point the results store and checkpoints at a temporary directory."""
    monkeypatch.setenv("RANK1_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path / "ckpt"))
    return tmp_path



@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """A CPU without bf16 in hardware (no AVX512-BF16, no AMX), as torch.cpu's probes report it."""
    import torch
    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: False, raising=False)


@pytest.fixture(autouse=True)
def _notebook_mode():
    """Every test starts as a notebook would (the CLI's allow_cli_only switch is process-wide)."""
    from rank1lib import store
    store.allow_cli_only(False)
    yield
    store.allow_cli_only(False)
