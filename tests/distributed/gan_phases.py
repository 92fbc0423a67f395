"""Run by torchrun from test_gan.py: the GAN step's two phases on a ZeRO-3 student (and frozen ZeRO-3 teacher),
once with each feature backbone. Each rank saves its inputs, the student's full weights and the full gradient of the
generator phase, and what each phase changed; the test recomputes the generator phase on one rank without ZeRO."""

import dataclasses
import sys
from pathlib import Path

import deepspeed
import torch
from deepspeed.utils import safe_get_full_grad

from ard_scale.config import load_config
from ard_scale.distributed.engines import finish_process, init_distributed
from ard_scale.trainer.build import build_run
from ard_scale.trainer.gan import GANNoise, build_gan, discriminator_phase, generator_phase, real_latents
from ard_scale.trainer.step import teacher_states


def full_student(run) -> dict[str, torch.Tensor]:
    params = list(run.student.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {n: p.detach().clone() for n, p in run.student.named_parameters()}


def clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    cfg = load_config(
        "recipes/tiny_cpu.yaml",
        [f"checkpoint.run_dir={out / 'run'}", "gan.enabled=true", "gan.warmup_steps=0", "gan.layers=[1,3]"],
    )
    rank, world = init_distributed()
    run = build_run(cfg, rank, world)
    batches = iter(run.loader)
    for step, backbone in enumerate(["student", "teacher"]):
        gan = build_gan(
            run, dataclasses.replace(cfg.gan, backbone=backbone), seed=cfg.train.seed, grad_clip=cfg.train.grad_clip
        )
        batch = next(batches)
        states, cond = teacher_states(run, batch, step)
        reals = real_latents(run, batch, tuple(states.shape[2:]), states.device)
        noise = GANNoise.draw(cfg.train.seed, step, rank, tuple(reals.shape), run.schedule.t_max, states.device)
        student0, heads0 = full_student(run), clone(gan.disc.state_dict())

        g = generator_phase(run, gan, states, cond, noise, step)
        run.engine.backward(g.total)
        grads = {n: safe_get_full_grad(p).clone() for n, p in run.student.named_parameters()}
        heads_after_g = clone(gan.disc.state_dict())
        run.engine.step()
        student1 = full_student(run)
        discriminator_phase(run, gan, g.x0_hat, reals, cond, noise, skip=False)
        student_after_d, heads_after_d = full_student(run), clone(gan.disc.state_dict())

        torch.save(
            {
                "states": states,
                "labels": cond.labels,
                "reals": reals,
                "noise": dataclasses.asdict(noise),
                "student": student0,
                "heads": heads0,
                "grads": grads,
                "weight": g.weight.item(),
                "loss_g": g.loss_g.item(),
                "heads_unchanged_by_g": all(torch.equal(heads0[k], v) for k, v in heads_after_g.items()),
                "student_changed_by_g": any(not torch.equal(student0[k], v) for k, v in student1.items()),
                "student_unchanged_by_d": all(torch.equal(student1[k], v) for k, v in student_after_d.items()),
                "heads_changed_by_d": any(not torch.equal(heads0[k], v) for k, v in heads_after_d.items()),
            },
            out / f"{backbone}_rank{rank}.pt",
        )


if __name__ == "__main__":
    main(sys.argv[1])
    finish_process()  # no SIGABRT in finalisation from a live gloo group (engines.finish_process)
