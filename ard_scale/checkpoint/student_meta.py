"""What a checkpoint records about its student, so that export can rebuild it and a resume can refuse a checkpoint
of another kind of student (a LoRA one for a full one, other adapter settings) or of a ZeRO stage DeepSpeed cannot
load into this run's."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ard_scale.config import to_dict
from ard_scale.errors import UserError


def student_architecture(module: torch.nn.Module) -> dict | None:
    """What `export` needs to rebuild an ARD student without the recipe's builder: the teacher-class diffusers
    config of its backbone, the ARD settings and the schedule. None for other modules."""
    from ard_scale.models.student import ARDStudent

    if not isinstance(module, ARDStudent):
        return None
    return {
        "family": module.family.name,
        "backbone_config": json.loads(module.backbone.to_json_string()),
        "ard": to_dict(module.cfg),
        "schedule": schedule_to_dict(module.schedule),
        "sampling": {
            "latent_shape": module.latent_shape,
            "guidance": module.guidance,
            **({"latent_sizes": module.latent_sizes} if module.latent_sizes is not None else {}),
        },
    }


def lora_layout(arch: dict | None) -> dict:
    """The LoRA settings that decide a student's trainable state (share_teacher does not: it moves memory only)."""
    lora = dict(((arch or {}).get("ard") or {}).get("lora") or {"rank": 0})
    lora.pop("share_teacher", None)
    return lora if lora.get("rank", 0) > 0 else {"rank": 0}


def check_student_kind(saved: dict | None, module: torch.nn.Module, where: Path | str) -> None:
    """Raise unless the student of a checkpoint (its meta's `student`) has the trainable state `module` has: a LoRA
    checkpoint is refused for a full student and vice versa, and so are other adapter settings."""
    ours = student_architecture(module)
    if saved is None or ours is None:
        return
    theirs, mine = lora_layout(saved), lora_layout(ours)
    if theirs == mine:
        return

    def kind(lora):
        settings = ", ".join(f"{k}={v!r}" for k, v in lora.items())
        return f"a LoRA student ({settings})" if lora["rank"] else "a full student"

    keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
    raise UserError(
        f"checkpoint {where} holds {kind(theirs)}, but this recipe builds {kind(mine)}; differing student.lora keys: "
        f"{', '.join(keys)}. Use the recipe's student.lora settings of that run (see {Path(where) / 'config.yaml'}), "
        "or start a new run in another checkpoint.run_dir",
        every_rank=True,  # the same checkpoint meta and recipe on every rank
    )


# ZeRO stages whose checkpoints DeepSpeed (0.19.8) loads into each other: stage 0 keeps the optimizer in the model
# states file, stages 1-2 write it per rank beside one model file, stage 3 both per rank; a universal conversion does
# not bridge them either (it loads into the stage that wrote it).
_LOADABLE_STAGES = {0: (0,), 1: (1, 2), 2: (1, 2), 3: (3,)}


def check_zero_stage(saved: int | None, ours: int, where: Path) -> None:
    """Raise unless a checkpoint written under ZeRO stage `saved` loads into an engine of stage `ours` (DeepSpeed
    otherwise fails inside its reader: a bare AssertionError, a missing optim_states file or a NoneType error). A
    zero.stage change is a recipe change, so it reaches here only under checkpoint.allow_recipe_change."""
    if saved is None or ours in _LOADABLE_STAGES.get(saved, (ours,)):
        return
    raise UserError(
        f"checkpoint {where} was written under ZeRO stage {saved} and this run has zero.stage={ours}: DeepSpeed "
        f"loads a stage-{saved} checkpoint only into stage {' or '.join(map(str, _LOADABLE_STAGES[saved]))} (a "
        f"universal conversion does not change that). Resume with zero.stage={saved} (zero.offload_* may change), or "
        "start a new run in another checkpoint.run_dir",
        every_rank=True,  # the same marker and recipe on every rank
    )


def schedule_to_dict(schedule) -> dict:
    from dataclasses import asdict

    from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule

    kind = {VPSchedule: "vp", FlowSchedule: "flow"}.get(type(schedule))
    if kind is None:
        raise UserError(f"unknown schedule type {type(schedule).__name__}; expected VPSchedule or FlowSchedule")
    return {"kind": kind, **asdict(schedule)}


def schedule_from_dict(d: dict):
    from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule

    d = dict(d)
    kind = d.pop("kind")
    return {"vp": VPSchedule, "flow": FlowSchedule}[kind](**d)
