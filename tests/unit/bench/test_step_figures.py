"""bench/train_step.py's step figures from fixed timings and its FLOP counts (no timing is measured here): the whole
step's MFU and, for issue 18's goal (student fwd+bwd ≥ 45 % MFU at PixArt-Σ 1024), the student's own."""

import sys

import pytest

from ard_scale.utils.launch import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import train_step  # noqa: E402  (bench/train_step.py)


def test_the_step_reports_the_mfu_of_the_student_fwd_bwd_and_of_the_teacher_beside_the_whole_steps():
    B, K = 2, 3
    flops = train_step.model_flops("pixart_sigma_1024", True, B, 6, K)
    # counted per step: S·K teacher steps of 2 forwards (batched CFG), the student's fwd+bwd = 3 forwards
    assert flops["teacher_step_gflops"] == pytest.approx(B * 2 * 4 * K * flops["teacher_forward_gflops"])
    assert flops["student_step_gflops"] == pytest.approx(B * 3 * flops["student_forward_gflops"])
    assert flops["step_gflops"] == pytest.approx(flops["teacher_step_gflops"] + flops["student_step_gflops"])

    med = {"teacher_s": 0.5, "student_s": 0.25, "optimizer_s": 0.25}
    peak = 0.01  # TFLOP/s
    fig = train_step.step_figures(med, flops, B, 64, peak)
    assert fig["step_s"] == 1.0 and fig["split"] == {"teacher_s": 0.5, "student_s": 0.25, "optimizer_s": 0.25}
    assert fig["student_tokens_per_s"] == B * 4 * 64
    assert fig["achieved_tflops"] == pytest.approx(flops["step_gflops"] / 1e3)
    assert fig["mfu"] == pytest.approx(flops["step_gflops"] / 1e3 / peak)
    assert fig["student_mfu"] == pytest.approx(flops["student_step_gflops"] / 0.25 / 1e3 / peak)
    assert fig["teacher_mfu"] == pytest.approx(flops["teacher_step_gflops"] / 0.5 / 1e3 / peak)
    assert train_step.step_figures(med, flops, B, 64, None)["student_mfu"] is None  # no peak measured
