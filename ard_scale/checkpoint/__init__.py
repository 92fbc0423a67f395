"""Sharded save/resume with an atomic `latest` and retention, universal checkpoints, export (DESIGN.md §2)."""

from ard_scale.checkpoint.manager import CheckpointManager, CheckpointSaveError
from ard_scale.checkpoint.run_lock import RunDirInUse
from ard_scale.checkpoint.universal import to_universal

__all__ = ["CheckpointManager", "CheckpointSaveError", "RunDirInUse", "to_universal"]
