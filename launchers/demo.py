"""The CPU demo: fit (or reuse) a small teacher on the bundled digits, distil a 4-step ARD student on 2 ranks, and
write a grid of teacher (its full-step sampler) vs student (4 steps) samples for the same noise.

    python launchers/demo.py [key=value ...]        # overrides for recipes/demo_digits.yaml

Writes RUN_DIR/demo.png (one column per class; rows in pairs on the same noise: the teacher, 12 guided DDIM steps =
24 network calls per sample, above the ARD student, 4 network calls, no CFG pass; tiles upscaled to 128 px, each
labelled) and RUN_DIR/demo.json (the final metrics: student-vs-teacher
MSE on the same noise, and how often a nearest-neighbour classifier over the real digits puts each model's
samples in their conditioning class). The student it compares is exported to RUN_DIR/demo_student (written again at
every run; launchers/export.py's own exports go to RUN_DIR/export/<tag> by default, and stay).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ard_scale.config import ConfigError, load_config  # noqa: E402
from ard_scale.config.paths import check_paths  # noqa: E402
from ard_scale.utils.cli import count  # noqa: E402
from ard_scale.utils.launch import torchrun  # noqa: E402
from ard_scale.utils.noise import eval_seeds  # noqa: E402

RECIPE = ROOT / "recipes" / "demo_digits.yaml"
PER_CLASS = 8
# the demo's own student export, replaced at every run: not RUN_DIR/export, where launchers/export.py writes a user's
# exports by default (RUN_DIR/export/<tag>), which replacing that folder deleted
STUDENT_DIR = "demo_student"


def fit_teacher_if_missing(teacher_dir: Path) -> None:
    """Reuse the teacher fitted into `teacher_dir` on an earlier run, else fit one there (a new or empty folder)."""
    if (teacher_dir / "transformer" / "config.json").is_file():
        print(f"[demo] reusing the teacher in {teacher_dir}")
        return
    sys.path.insert(0, str(ROOT / "launchers"))
    import fit_teacher

    try:
        fit_teacher.check_out(teacher_dir)
    except ValueError:
        sys.exit(
            f"error: teacher.path {teacher_dir} holds files but no fitted teacher (no transformer/config.json); "
            "remove it to fit the teacher there, or give teacher.path=DIR (a new folder or a fitted teacher)"
        )
    print(f"[demo] fitting the teacher on the bundled digits -> {teacher_dir} (a few minutes)")
    fit_teacher.main(["--out", str(teacher_dir), "--family", "dit"])


def distil(overrides: list[str], nproc: int) -> None:
    print(f"[demo] distilling the 4-step ARD student on {nproc} ranks (gloo)")
    torchrun(nproc, ROOT / "launchers" / "train.py", str(RECIPE), *overrides, capture=False, timeout=None, check=True)


@torch.no_grad()
def compare(cfg, run_dir: Path) -> dict:
    """Teacher vs exported student on the same noise, per class; writes demo.png and demo.json."""
    from fit_teacher import sample_accuracy

    from ard_scale.checkpoint.export import export_student, load_exported_student
    from ard_scale.data.bundled import load_digits
    from ard_scale.diffusion.condition import Condition
    from ard_scale.diffusion.solvers import num_evals
    from ard_scale.diffusion.trajectory import teacher_trajectory
    from ard_scale.evaluation.grids import save_png
    from ard_scale.models.teachers import load_teacher

    export_dir = run_dir / STUDENT_DIR
    export_student(run_dir, export_dir, replace=True)  # a rerun of the demo exports its newest checkpoint again
    student = load_exported_student(export_dir).eval()
    teacher = load_teacher(cfg.teacher.path)
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    cond = Condition(labels=labels)
    shape = (teacher.in_channels, teacher.sample_size, teacher.sample_size)
    d = cfg.diffusion
    traj = teacher_trajectory(
        teacher,
        student.schedule,
        cond,
        latent_shape=shape,
        seeds=eval_seeds(len(labels)),  # never the noise of a training batch
        null_cond=teacher.null_condition(len(labels)),
        guidance_scale=d.guidance_scale,
        num_student_steps=cfg.student.num_steps,
        substeps=d.substeps,
        solver=d.solver,
    )
    teacher_x = traj.final.clamp(-1, 1)
    student_x = student.sample(traj.states[:, 0], cond).clamp(-1, 1)
    real, real_labels = load_digits(teacher.sample_size)
    metrics = {
        "student_vs_teacher_mse": float((student_x - teacher_x).pow(2).mean()),
        "teacher_class_accuracy": sample_accuracy(teacher_x, labels, real, real_labels),
        "student_class_accuracy": sample_accuracy(student_x, labels, real, real_labels),
        "teacher_network_calls_per_sample": num_evals(
            d.solver, d.substeps * cfg.student.num_steps, guided=d.guidance_scale != 1
        ),
        "student_network_calls_per_sample": cfg.student.num_steps,
    }
    grid = demo_grid(
        teacher_x,
        student_x,
        metrics["teacher_network_calls_per_sample"],
        metrics["student_network_calls_per_sample"],
    )
    save_png(run_dir / "demo.png", grid)
    (run_dir / "demo.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def demo_grid(
    teacher_x: torch.Tensor, student_x: torch.Tensor, teacher_calls: int, student_calls: int, num_shown: int = 3
):
    """uint8 (H, W, 3) image of (10·PER_CLASS, C, R, R) samples in [-1, 1] (sample i of class c at c·PER_CLASS + i):
    one column per class, labelled under each tile; rows alternate teacher / student on the same noise for the first
    `num_shown` samples of each class, labelled with their network calls per sample."""
    from ard_scale.evaluation.grids import labelled_grid, to_uint8_hwc

    rows, row_labels = [], []
    for i in range(num_shown):
        idx = torch.arange(10) * PER_CLASS + i  # sample i of every class: the same noise in both rows
        rows += [to_uint8_hwc(teacher_x[idx]), to_uint8_hwc(student_x[idx])]
        row_labels += [f"teacher: {teacher_calls} calls", f"student: {student_calls} calls"]
    return labelled_grid(rows, [f"class {c}" for c in range(10)], row_labels)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides for recipes/demo_digits.yaml")
    parser.add_argument("--nproc", type=count(), default=2, help="training ranks")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(RECIPE, args.overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if cfg.teacher.path is None:  # a named size: random weights, nothing fitted to compare the student with
        sys.exit(
            f"error: teacher.size={cfg.teacher.size}: the demo distils the teacher launchers/fit_teacher.py fits on "
            "the digits, kept at teacher.path; drop the teacher.size and teacher.path overrides (or give "
            "teacher.path=DIR to fit or reuse it there), or distil a named size with launchers/train.py"
        )
    os.chdir(ROOT)  # the recipe's paths are relative to the repository root
    run_dir = Path(cfg.checkpoint.run_dir)
    fit_teacher_if_missing(Path(cfg.teacher.path))
    try:
        check_paths(cfg, source=str(RECIPE))  # as train.py does, once here rather than inside torchrun's traceback
        distil(args.overrides, args.nproc)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    except subprocess.CalledProcessError as e:  # train.py said why (an `error:` line above, or its traceback)
        sys.exit(f"error: training stopped with exit status {e.returncode} (its error is above); nothing was exported")
    metrics = compare(cfg, run_dir)
    print(f"[demo] {json.dumps(metrics)}")
    print(f"[demo] samples: {run_dir / 'demo.png'} (one column per class; teacher rows above 4-step student rows)")
    return metrics


if __name__ == "__main__":
    main()
