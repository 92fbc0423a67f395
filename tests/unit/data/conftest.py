import pytest


@pytest.fixture
def mds_env(monkeypatch):
    """Single-rank world variables for streaming, restored after the test (the MDS loader exports them)."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
