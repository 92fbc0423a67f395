"""FLOPs of the ARD student counted with torch's FLOP counter on the meta device (no weights allocated).

Counted, not derived by formula: whatever the student really runs is what is counted. Masked SDPA in the lowest N
blocks of the training forward is counted at full (S·L)² cost, because that is what a boolean-mask kernel computes.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher, build_teacher


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def example_condition(teacher: Teacher, batch: int, device, text_tokens: int = 300) -> Condition:
    return teacher.example_condition(batch, device, text_tokens)


def student_flops(family: str, size: str, cfg: ARDConfig, *, batch: int = 1, text_tokens: int = 300) -> dict:
    """GFLOPs per sample of S-step sampling (KV cache) and of one teacher-forced training forward, on meta."""
    teacher = build_teacher(family, size, device="meta")
    with torch.device("meta"):
        student = ARDStudent(teacher, cfg, VPSchedule())
    side = teacher.sample_size
    cond = example_condition(teacher, batch, "meta", text_tokens)
    noise = torch.empty(batch, teacher.in_channels, side, side, device="meta")
    states = torch.empty(batch, cfg.num_steps, teacher.in_channels, side, side, device="meta")
    sampling = count_flops(lambda: student.sample(noise, cond))
    with torch.no_grad():
        training = count_flops(lambda: student(states, cond))
        one_step = count_flops(lambda: teacher(noise, torch.full((batch,), 500.0, device="meta"), cond))
    return {
        "sampling_gflops": sampling / batch / 1e9,
        "train_forward_gflops": training / batch / 1e9,
        "teacher_gflops": one_step / batch / 1e9,
        "image_tokens": (side // teacher.patch_size) ** 2,
        "text_tokens": None if cond.text is None else cond.text.shape[1],  # SD3: its 77 CLIP tokens included
    }
