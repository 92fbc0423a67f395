import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Launched ranks (torchrun subprocesses) inherit this: the venv's tools first on PATH, so DeepSpeed's shm op is
# always built with the same ninja (it rebuilds when ninja changes), into a cache the project controls.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
# ZeRO-3 partitions every parameter, as it does a real model's (ard_scale/distributed/engines.py PARTITION_ALL_ENV):
# the tiny test models are under DeepSpeed's persistence threshold, which would leave them whole on every rank and hide
# a forward that runs on some ranks only (a hang on a real run). Launched ranks inherit it. Set it to 0 to compare.
os.environ.setdefault("ARD_SCALE_TEST_ZERO3_PARTITION_ALL", "1")

# Tests are deterministic and CPU-sized; keep torch from oversubscribing the 2-core CI machine: the cores are shared
# between the pytest-xdist workers (`-n 2` in pyproject.toml runs two test files at once).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
    # Files with a slow test first, each file's tests kept together and in order: pytest-xdist hands whole files to
    # its two workers in this order, so the long ones (most launch 2-rank jobs) start early and the many short unit
    # files even out the end (longest first, roughly). A stable sort keeps the collection order otherwise.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def mds_env(monkeypatch):
    """Single-rank world variables for streaming, restored after the test (the MDS loader exports them)."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size_kib) mounts a tmpfs of that size at a new folder (again: resizes it) and returns the folder: a
    real disk that fills up; `read_only=True` (re)mounts it read-only, as a disk error leaves one. Needs root and mount
    (CI has both, for Slurm); without them the test is skipped."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = []

    def mount(size_kib: int, read_only: bool = False):
        options = f"{'remount,' if mounted else ''}size={size_kib}k,{'ro' if read_only else 'rw'}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"a full disk needs a small tmpfs, which needs root and mount: {done.stderr.decode()[-200:]}")
        mounted.append(size_kib)
        return folder

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)
