"""Loading checkpoint files without unpickling arbitrary objects (issue 16, item 1).

Everything ard_scale writes is tensors and plain containers, so it loads with `weights_only=True`. DeepSpeed's own
files need two of its classes besides (found by loading real ZeRO-3 checkpoints of deepspeed 0.19.8); they are
allowlisted here and nothing else. DeepSpeed itself loads its files with `weights_only=False`, so `verify_dir` checks
every file of a tag with the safe loader before `engine.load_checkpoint` touches it.
"""

from __future__ import annotations

import pickle
from pathlib import Path


def _deepspeed_globals() -> list:
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
    except ImportError:  # exporting without deepspeed installed: only ard_scale's own files can be read
        return []
    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


def safe_load(path: str | Path, map_location="cpu"):
    """`torch.load(path, weights_only=True)` with DeepSpeed's few checkpoint classes allowed; a file holding anything
    else (a planted pickle, a damaged file) is a ValueError naming it."""
    import torch

    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"refusing to load checkpoint file {path}: it is not a plain tensor checkpoint ard_scale or DeepSpeed "
            f"writes (damaged, or it holds objects that would run code when unpickled): {str(e).splitlines()[-1][:300]}"
        ) from e


def verify_dir(tag_dir: str | Path) -> None:
    """Load every `*.pt` under `tag_dir` with `safe_load` (raises naming the first bad file)."""
    for path in sorted(Path(tag_dir).rglob("*.pt")):
        safe_load(path)
