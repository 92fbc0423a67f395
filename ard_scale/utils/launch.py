"""Start a local multi-process job (one host, torchrun's standalone rendezvous), as the demo and the tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ard_scale.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def launch_env(**extra: str) -> dict[str, str]:
    """The environment for launched ranks: the package importable, one OpenMP thread per rank (2 ranks share 2
    cores here), this interpreter's tools first on PATH and one DeepSpeed extension cache, so DeepSpeed's shm op is
    built once, with the same ninja, and reused."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
    }
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(
    nproc: int,
    script: str | Path,
    *args: str,
    capture: bool = True,
    timeout: float | None = 600,
    check: bool = False,
    launcher: str = "torchrun",
) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node N SCRIPT ARGS…` from the repository root, or
    with `launcher="deepspeed"` DeepSpeed's own launcher, `deepspeed --num_gpus N SCRIPT ARGS…` (it starts N ranks on
    CPU too)."""
    if launcher == "deepspeed":
        exe = Path(sys.executable).parent / "deepspeed"
        cmd = [str(exe), "--num_gpus", str(nproc), "--master_port", str(free_port()), str(script), *map(str, args)]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        cmd += [str(script), *map(str, args)]
    else:
        raise UserError(f"unknown launcher {launcher!r}; choose 'torchrun' or 'deepspeed'")
    return subprocess.run(
        cmd, env=launch_env(), cwd=ROOT, capture_output=capture, text=True, timeout=timeout, check=check
    )
