"""A LoRA student sharing the teacher's weights, trained end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo, fp32):
the shared run's losses equal a run with a separate teacher copy, through a resume; its checkpoints hold only the
trainable state; merged and adapter-only exports sample as the checkpoint's student."""

import json
from pathlib import Path

import pytest
import recipe_runs
import torch
from recipe_runs import REPLAY, losses

from ard_scale.checkpoint.export import (
    export_student,
    load_exported_student,
    lora_checkpoint_student,
    sample_noise,
    student_state_dict,
)
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_teacher_model

RECIPE = "recipes/tiny_cpu.yaml"
LORA = ("student.lora.rank=4", "student.lora.alpha=8")


def train(run_dir: Path, *overrides: str):
    return recipe_runs.train(RECIPE, run_dir, *LORA, *REPLAY, *overrides)  # replay: one fixed batch, the loss must fall


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    separate, shared, gan = tmp / "separate", tmp / "shared", tmp / "gan"
    for proc in (
        train(separate, "train.max_steps=4", "student.lora.share_teacher=false"),
        train(shared, "train.max_steps=2"),
        train(shared, "train.max_steps=4"),  # resumes at step 2
        # the GAN stage on the shared module (student features through the adapters), at ZeRO 2
        train(gan, "train.max_steps=3", "zero.stage=2", "gan.enabled=true", "gan.warmup_steps=1"),
    ):
        assert proc.returncode == 0, proc.stderr[-4000:]
    return {"separate": separate, "shared": shared, "gan": gan}


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_sharing_changes_memory_not_numbers_through_a_resume(runs):
    separate, shared = losses(runs["separate"]), losses(runs["shared"])
    assert len(shared) == 4 and shared == separate  # bit-identical: shared weights, and the resume at step 2
    assert shared[-1] < 0.9 * shared[0], shared  # the adapters and heads learn


def test_the_gan_stage_trains_the_shared_lora_student_at_zero_2(runs):
    rows = [json.loads(line) for line in (runs["gan"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    on = [r for r in rows if r.get("gan_weight", 0) > 0]
    assert on and all(torch.isfinite(torch.tensor([r["loss_g"], r["loss_d"], r["loss"]])).all() for r in on)
    state, arch, *_ = student_state_dict(runs["gan"], use_ema=False)
    assert arch["ard"]["lora"]["rank"] == 4 and all(".lora_" in k or k.startswith("heads.") for k in state)


def test_checkpoints_hold_only_the_trainable_state(runs):
    state, arch, _, weights = student_state_dict(runs["shared"], use_ema=False)
    assert arch["ard"]["lora"]["rank"] == 4 and weights == "raw"
    assert state and all(".lora_" in k or k.startswith("heads.") for k in state)
    ema, *_ = student_state_dict(runs["shared"], use_ema=True)
    assert ema.keys() == state.keys() and any(not torch.equal(ema[k], state[k]) for k in state)


def test_merged_and_adapter_exports_sample_as_the_checkpoint_student(runs, tmp_path):
    state, arch, tag, _ = student_state_dict(runs["shared"], use_ema=False)
    reference = lora_checkpoint_student(runs["shared"], tag, arch, state).eval()
    merged = load_exported_student(export_student(runs["shared"], tmp_path / "merged", use_ema=False))
    adapter_dir = export_student(runs["shared"], tmp_path / "adapter", use_ema=False, adapter_only=True)
    adapter = load_exported_student(adapter_dir)
    assert merged.cfg.lora.rank == 0 and adapter.cfg.lora.rank == 4  # merged: a plain full student
    assert not (adapter_dir / "diffusion_pytorch_model.safetensors").exists()  # no base weights in the adapter folder

    labels = torch.tensor([3, 7])
    from ard_scale.diffusion.condition import Condition

    cond = Condition(labels=labels)
    noise = sample_noise(reference, 2, seed=4)
    want = reference.sample(noise, cond)
    torch.testing.assert_close(merged.sample(noise, cond), want, rtol=1e-4, atol=1e-5)  # W+BA: other rounding
    torch.testing.assert_close(adapter.sample(noise, cond), want, rtol=0, atol=0)
    # trained: the student no longer samples as its initialisation does
    cfg = json.loads((adapter_dir / "ard_config.json").read_text())
    init = ARDStudent(build_teacher_model_from(runs["shared"], tag), merged.cfg, reference.schedule).eval()
    assert cfg["source"]["base"]["size"] == "debug"
    assert (init.sample(noise, cond) - want).abs().max() > 1e-4


def build_teacher_model_from(run_dir: Path, tag: str):
    from ard_scale.config import load_config

    return build_teacher_model(load_config(run_dir / "checkpoints" / tag / "config.yaml"))
