"""The exported backbone is the teacher's own diffusers class with head 0 as its final layer (checkpoint/export.py's
module docstring): what a diffusers user loading the folder as a plain transformer gets. Heads made distinct here,
since a fresh student's heads are all copies of the teacher's final layer."""

import torch

from ard_scale.checkpoint.export import _teacher_class_state
from ard_scale.config import load_config
from ard_scale.models.families import get_family
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model


def test_the_exported_backbone_loads_strictly_into_the_teacher_class_with_head_0_as_its_final_layer():
    cfg = load_config("recipes/tiny_cpu.yaml")
    teacher = build_teacher_model(cfg)
    student = ARDStudent(teacher, cfg.student, build_schedule(cfg))
    with torch.no_grad():
        for s, head in enumerate(student.heads):
            for p in head.parameters():
                p.add_(float(s + 1))
    state = _teacher_class_state(student.state_dict())
    model = get_family("dit").model_class.from_config(student.backbone.config)
    model.load_state_dict(state, strict=True)
    exported = model.state_dict()
    head0 = student.heads[0].state_dict()
    assert head0
    for name, value in head0.items():
        assert torch.equal(exported[name], value), name
    for name, value in student.backbone.state_dict().items():
        if name not in head0:
            assert torch.equal(exported[name], value), name
