"""Evaluate a run's checkpoints offline: FID / CLIP score of each complete checkpoint, once.

    python launchers/eval.py RUN_DIR                 # evaluate every complete checkpoint not yet evaluated, then exit
    python launchers/eval.py RUN_DIR --watch         # ... and keep polling for new ones (e.g. as its own Slurm job)

Writes RUN_DIR/eval/step_XXXXXXXX.json per checkpoint (atomically: a restarted job skips what is written) and
RUN_DIR/eval/metrics.png, FID and CLIP score against step with the teacher's values (RUN_DIR/eval/teacher.json,
computed once) as reference lines. A checkpoint is complete when RUN_DIR/checkpoints/latest names it or a later
step, or when its folder holds ard_checkpoint.json (see ard_scale/checkpoint/manager.py).

Wired so far: class-conditional (DiT) pixel-space students, FID against eval.fid_reference_path (.npz), one
process, the student on CPU. Not yet: CLIP score for T2I students, VAE decode, computing the teacher's values (the
plot shows them when RUN_DIR/eval/teacher.json exists), reference statistics from data shards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.checkpoint.manager import LATEST, META, atomic_write_text, step_of, tag_of  # noqa: E402

METRICS = (("fid", "FID (lower is better)"), ("clip_score", "CLIP score (higher is better)"))
Evaluate = Callable[[int, Path], dict]  # (step, checkpoint folder) -> {"fid": ..., "clip_score": ...}


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    ckpt_dir = run_dir / "checkpoints"
    latest = ckpt_dir / LATEST
    latest_step = step_of(latest.read_text(encoding="utf-8").strip()) if latest.is_file() else None
    out = []
    for p in ckpt_dir.glob("step_*") if ckpt_dir.is_dir() else []:
        step = step_of(p.name)  # None for step_…_universal and temporary names
        if (
            step is not None
            and p.is_dir()
            and ((latest_step is not None and step <= latest_step) or (p / META).is_file())
        ):
            out.append((step, p))
    return sorted(out)


def result_path(run_dir: Path, step: int) -> Path:
    return run_dir / "eval" / f"{tag_of(step)}.json"


def read_results(run_dir: Path) -> list[dict]:
    """Every written result, by step."""
    out = [json.loads(p.read_text(encoding="utf-8")) for p in (run_dir / "eval").glob("step_*.json")]
    return sorted(out, key=lambda r: r["step"])


def teacher_metrics(run_dir: Path, evaluate_teacher: Callable[[], dict] | None) -> dict | None:
    """The teacher's metrics, computed once and kept in RUN_DIR/eval/teacher.json."""
    path = run_dir / "eval" / "teacher.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if evaluate_teacher is None:
        return None
    result = evaluate_teacher()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True))
    return result


def plot(run_dir: Path, teacher: dict | None) -> Path:
    """RUN_DIR/eval/metrics.png: each metric against step, the teacher's value as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = read_results(run_dir)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], METRICS, strict=True):
        points = [(r["step"], r[key]) for r in results if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label="student")
        if teacher and key in teacher:
            ax.axhline(teacher[key], color="k", linestyle="--", label="teacher")
        ax.set(xlabel="step", title=label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = run_dir / "eval" / "metrics.png"
    tmp = out.with_name(".metrics.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def evaluate_pending(run_dir: Path, evaluate: Evaluate, teacher: dict | None = None) -> list[int]:
    """Evaluate each complete checkpoint that has no result yet, write its JSON and the plot; the steps done."""
    done = []
    for step, folder in complete_checkpoints(run_dir):
        path = result_path(run_dir, step)
        if path.is_file():
            continue
        result = {"step": step, **evaluate(step, folder)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True))
        done.append(step)
        plot(run_dir, teacher)  # after every checkpoint: a long backlog shows progress
    return done


def watch(
    run_dir: Path,
    evaluate: Evaluate,
    *,
    teacher: dict | None = None,
    poll_seconds: float = 60.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Poll for complete checkpoints and evaluate each once, until `should_stop()` (checked between polls)."""
    while True:
        evaluate_pending(run_dir, evaluate, teacher)
        if should_stop():
            return
        time.sleep(poll_seconds)  # the polling period, not synchronisation: a missed checkpoint is seen next poll


def student_evaluate(run_dir: Path, cfg, evaluator, *, work_dir: Path) -> Evaluate:
    """Evaluate = export the checkpoint (EMA weights if cfg.eval.use_ema), load the student without DeepSpeed and run
    `evaluator` on its S-step samples. Class-conditional pixel-space students only (no VAE decode yet)."""
    from ard_scale.checkpoint.export import export_student, load_exported_student
    from ard_scale.evaluation.generate import class_conditional_generate_fn

    if cfg.teacher.family != "dit":
        raise ValueError(f"offline evaluation supports teacher.family 'dit' only so far, got {cfg.teacher.family!r}")

    def evaluate(step: int, folder: Path) -> dict:
        out_dir = export_student(run_dir, work_dir / folder.name, tag=folder.name, use_ema=cfg.eval.use_ema)
        student = load_exported_student(out_dir)
        side = student.backbone.config.sample_size
        generate = class_conditional_generate_fn(
            student.sample, noise_shape=(student.in_channels, side, side), num_classes=cfg.teacher.num_classes
        )
        return evaluator.run(generate)

    return evaluate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--watch", action="store_true", help="keep polling for new checkpoints")
    parser.add_argument("--poll-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    if not (run_dir / "checkpoints").is_dir():
        sys.exit(f"error: {run_dir / 'checkpoints'} does not exist: is {run_dir} a run directory?")
    checkpoints = complete_checkpoints(run_dir)

    import tempfile

    from ard_scale.config import load_config
    from ard_scale.evaluation.evaluator import Evaluator
    from ard_scale.evaluation.fid import FID, ReferenceStats, inception_feature_extractor

    def wait_for_first() -> Path:  # the recipe comes from the first complete checkpoint's config.yaml
        while not (found := complete_checkpoints(run_dir)):
            if not args.watch:
                sys.exit(f"error: no complete checkpoint in {run_dir / 'checkpoints'}")
            time.sleep(args.poll_seconds)
        return found[0][1]

    cfg = load_config((checkpoints[0][1] if checkpoints else wait_for_first()) / "config.yaml")
    ev = cfg.eval
    try:
        if ev.fid_inception_path is None or ev.fid_reference_path is None:
            raise ValueError("offline FID needs eval.fid_inception_path and eval.fid_reference_path (an .npz)")
        extractor = inception_feature_extractor(ev.fid_inception_path)
        fid = FID(extractor, ReferenceStats.load(ev.fid_reference_path, extractor.num_features))
    except ValueError as e:
        sys.exit(f"error: {e}")
    fid.to("cuda" if torch_cuda() else "cpu")
    evaluator = Evaluator(ev, fid=fid)
    with tempfile.TemporaryDirectory(prefix="ard_eval_") as work:
        evaluate = student_evaluate(run_dir, cfg, evaluator, work_dir=Path(work))
        teacher = teacher_metrics(run_dir, None)  # shown when RUN_DIR/eval/teacher.json exists
        if args.watch:
            watch(run_dir, evaluate, teacher=teacher, poll_seconds=args.poll_seconds)
        else:
            print(evaluate_pending(run_dir, evaluate, teacher))


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
