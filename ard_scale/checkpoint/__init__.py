"""Sharded save/resume with an atomic `latest` and retention, universal checkpoints, export (DESIGN.md §2)."""

from ard_scale.checkpoint.manager import CheckpointManager, CheckpointSaveError
from ard_scale.checkpoint.run_lock import RunDirInUse

# universal (to_universal) is not imported here: `python -m ard_scale.checkpoint.universal` would then run a module
# already imported by its package (runpy's RuntimeWarning)
__all__ = ["CheckpointManager", "CheckpointSaveError", "RunDirInUse"]
