"""In-loop evaluation end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo): evaluation runs on every rank with the
EMA swapped in and leaves training bit-identical; without weights files it still writes the teacher-over-student grid
and says what it skipped; the text-to-image path (prompts -> partitioned T5 -> sharded student -> VAE -> CLIP score)
gives, split over 2 ranks, the teacher's numbers one process computes, and the offline job on the run's checkpoint
agrees with the in-loop numbers and reuses the cached teacher values."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from eval_assets import write_tiny_clip_folder, write_tiny_t5
from PIL import Image

from ard_scale.utils.launch import ROOT, torchrun

SMALL = ("train.max_steps=4", "checkpoint.every=100", "eval.num_samples=3", "eval.batch_size=2", "eval.grid_size=2")


def train(run_dir: Path, *overrides: str):
    proc = torchrun(
        2, "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}", *SMALL, *overrides
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def one_process_teacher_metrics(overrides: list[str], cache_dir: Path) -> tuple[dict, str]:
    """The teacher's metrics for the recipe computed here, in one process, into `cache_dir`; (values, cache file)."""
    from ard_scale.config import load_config
    from ard_scale.models.vae import build_codec
    from ard_scale.trainer.build import build_conditioner, build_schedule, build_teacher_model
    from ard_scale.trainer.evaluate import build_eval_setup

    cfg = load_config(ROOT / "recipes" / "tiny_cpu.yaml", [*overrides, f"eval.cache_dir={cache_dir}"])
    teacher = build_teacher_model(cfg)
    setup = build_eval_setup(
        cfg,
        teacher=teacher,
        teacher_denoise=teacher,
        schedule=build_schedule(cfg),
        conditioner=build_conditioner(cfg, teacher),
        codec=build_codec(size=cfg.vae.size, path=None, scaling_factor=None, channels=teacher.in_channels),
        run_dir=Path(cfg.checkpoint.run_dir),
    )
    values = setup.teacher_metrics()
    (written,) = cache_dir.glob("teacher_*.json")
    return values, written.name


def records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if any(k.startswith("eval/") for k in r)]
    return [r for r in lines if "loss" in r], evals


def grid(run_dir: Path, step: int) -> np.ndarray:
    return np.asarray(Image.open(run_dir / "eval" / "grids" / f"step_{step:08d}.png"))


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_leaves_training_bit_identical_and_writes_grids_without_weights(tiny_run, tmp_path):
    evaluated = tmp_path / "evaluated"
    proc = train(evaluated, "eval.every=2")

    losses, evals = records(evaluated)
    plain = records(tiny_run)[0][:4]  # the same recipe without evaluation (tests/e2e/conftest.py): its first 4 steps
    assert len(losses) == 4 and [r["loss"] for r in losses] == [r["loss"] for r in plain]  # fp32, 2 ranks: bit for bit
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval/ema"] == 1.0 for r in evals)
    assert "in-loop evaluation skips FID (eval.fid_inception_path is null" in proc.stderr
    assert proc.stderr.count("in-loop evaluation skips") == 1  # said once, by rank 0
    first, last = grid(evaluated, 2), grid(evaluated, 4)
    # teacher row over student row, 2 samples of 32 px upscaled to 128, 4 px gaps, a label above each row and under
    # each column
    assert first.shape == (2 * (14 + 128 + 14 + 4) + 4, 2 * (128 + 4) + 4, 3)
    half = first.shape[0] // 2
    assert np.array_equal(first[:half], last[:half])  # the teacher row: same noise, same teacher
    assert not np.array_equal(first[half:], last[half:])  # the student (its EMA) moved between evaluations


@pytest.mark.slow
@pytest.mark.distributed
def test_text_to_image_eval_on_two_ranks_matches_one_process(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit one\na handwritten digit two\na handwritten digit three\n")
    # a T5 that ZeRO-3 partitions: encoding on rank 0 alone (the grid's labels) would hang the run
    t5, clip = write_tiny_t5(tmp_path / "t5", vocab_size=5000), write_tiny_clip_folder(tmp_path / "clip")
    overrides = ["teacher.family=pixart", "teacher.num_classes=null", f"text_encoder.path={t5}",
                 "text_encoder.max_length=16", f"eval.prompts_path={prompts}", f"eval.clip_path={clip}"]  # fmt: skip
    run_dir = tmp_path / "run"
    train(run_dir, "eval.every=2", "train.max_steps=2", *overrides)

    _, evals = records(run_dir)
    assert [r["step"] for r in evals] == [2]
    record = evals[0]
    assert 0 <= record["eval/clip_score"] <= 100 and record["eval/num_samples"] == 3
    cached = list((run_dir / "eval" / "cache").glob("teacher_*.json"))
    assert len(cached) == 1
    assert (run_dir / "eval" / "grids" / "step_00000002.png").is_file()

    # the same teacher metrics from one process, recomputed in a fresh cache: the 2-rank split changes nothing
    values, name = one_process_teacher_metrics(
        [*SMALL, *overrides, f"checkpoint.run_dir={run_dir}", "eval.every=2", "train.max_steps=2"], tmp_path / "fresh"
    )
    assert name == cached[0].name  # the same key: the cache is found by the offline job and other runs
    assert record["eval/teacher_clip_score"] == pytest.approx(values["clip_score"], rel=1e-5)

    # the offline job on the run's checkpoint: export (EMA), sample, decode, CLIP; the teacher's values come from the
    # in-loop evaluation's cache (not recomputed) and draw the plot's reference line
    stamp = cached[0].stat().st_mtime_ns
    spec = importlib.util.spec_from_file_location("ard_eval_launcher_e2e", ROOT / "launchers" / "eval.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    launcher.main([str(run_dir)])
    offline = json.loads((run_dir / "eval" / "step_00000002.json").read_text())
    assert offline["step"] == 2 and offline["num_samples"] == 3 and 0 <= offline["clip_score"] <= 100
    assert offline["clip_score"] == pytest.approx(record["eval/clip_score"], rel=1e-4)  # same EMA weights, same set
    assert cached[0].stat().st_mtime_ns == stamp
    assert (run_dir / "eval" / "metrics.png").is_file()
