"""bench/trajectory.py as train_step.py runs it (issue 18: our teacher trajectory vs the diffusers pipeline's own
denoising loop in bf16), at debug size on CPU: it runs in bf16 on both sides and checks that the two loops' final
latents are the same. No assertion on the speed ratio."""

import argparse
import sys

import torch

from ard_scale.utils.launch import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import train_step  # noqa: E402  (bench/train_step.py)
import trajectory  # noqa: E402  (bench/trajectory.py)

TINY = ["--layers", "2", "--width", "64", "--latent-size", "8", "--steps", "4", "--repeats", "1", "--device", "cpu"]


def test_the_step_benchmark_compares_the_loops_in_bf16_and_checks_their_latents():
    out = train_step.trajectory_part(torch.device("cpu"), argparse.Namespace(debug=True))
    assert out["config"]["dtype"] == "bf16"
    assert out["latents_match"] is True and out["latents_tolerance"] == trajectory.TOLERANCE["bf16"]
    assert 0 < out["max_rel_err_vs_diffusers"] <= trajectory.TOLERANCE["bf16"]


def test_in_fp32_the_two_loops_give_the_same_latents_to_rounding():
    out = trajectory.main(TINY)
    assert out["config"]["dtype"] == "fp32" and out["latents_match"] is True
    assert out["max_rel_err_vs_diffusers"] <= 1e-5


def test_loops_that_compute_different_latents_fail_the_check():
    """The pipeline's noise drawn from other seeds than ours (bench/trajectory.py's own `draw_noise` feeds only it)."""
    draw = trajectory.draw_noise
    try:
        trajectory.draw_noise = lambda seeds, *a, **k: draw([s + 1 for s in seeds], *a, **k)
        out = trajectory.main(TINY)
    finally:
        trajectory.draw_noise = draw
    assert out["latents_match"] is False and out["max_rel_err_vs_diffusers"] > trajectory.TOLERANCE["bf16"]
