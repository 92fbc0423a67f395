"""ZeroEMA under ZeRO-3 and bf16 averages the optimizer's fp32 master weights, not their bf16 copies (a real
one-process DeepSpeed engine of the tiny recipe's student). The 2-rank test (tests/distributed/test_ema.py) trains in
fp32, where both are the same numbers."""

from one_process import run_child

CHILD = """
import json
import deepspeed
import torch
from ard_scale.config import load_config
from ard_scale.diffusion.condition import Condition
from ard_scale.distributed.ema import ZeroEMA
from ard_scale.distributed.engines import build_student_engine, init_distributed
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model, latent_shape, student_engine_config

torch.set_num_threads(1)
init_distributed()
cfg = load_config("recipes/tiny_cpu.yaml", ["zero.stage=3", "train.precision=bf16", "train.lr=1e-3"])
teacher = build_teacher_model(cfg)
shape = latent_shape(cfg, teacher)
student = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=shape)
engine, _ = build_student_engine(student, student_engine_config(cfg))
ema = ZeroEMA(engine, 0.0)  # decay 0: after an update the EMA is the weights it averages
for step in range(3):
    states = torch.randn(2, cfg.student.num_steps, *shape, generator=torch.Generator().manual_seed(step))
    engine.backward(engine(states.to(torch.bfloat16), Condition(labels=torch.tensor([1, 2]))).float().square().mean())
    engine.step()
ema.update()
full = ema.full_state_dict()
params = dict(student.named_parameters())
master = {n: deepspeed.utils.safe_get_full_fp32_param(p) for n, p in params.items()}
with deepspeed.zero.GatheredParameters(list(params.values())):
    bf16 = {n: p.detach().float().clone() for n, p in params.items()}
diff = lambda a, b: max((a[n] - b[n]).abs().max().item() for n in params)  # noqa: E731
print("RESULT " + json.dumps({"zero3": ema.zero3, "ema_vs_master": diff(full, master),
                              "bf16_vs_master": diff(bf16, master)}), flush=True)
"""


def test_the_zero3_bf16_ema_follows_the_fp32_master_weights():
    got = run_child(CHILD)
    assert got["zero3"]
    assert got["bf16_vs_master"] > 0  # the bf16 copies are rounded: the check below can tell them apart
    assert got["ema_vs_master"] == 0
