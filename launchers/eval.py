"""Evaluate a run's checkpoints offline: FID / CLIP score of each complete checkpoint, once.

    python launchers/eval.py RUN_DIR                 # evaluate every complete checkpoint not yet evaluated, then exit
    python launchers/eval.py RUN_DIR --watch         # ... and keep polling for new ones (e.g. as its own Slurm job)
    python launchers/eval.py RUN_DIR eval.fid_inception_path=PATH eval.num_samples=8   # eval.* settings win

Writes RUN_DIR/eval/step_XXXXXXXX.json per checkpoint (strict JSON: a NaN metric is null, as in metrics.jsonl;
atomically: a restarted job skips what is written; a rerun with other eval settings that change the numbers, e.g.
eval.num_samples, evaluates it again, since each result records them) and RUN_DIR/eval/metrics.png, FID and CLIP score
against step with the teacher's values as reference lines. The teacher's values are computed once per recipe and cached
(eval.cache_dir, default RUN_DIR/eval/cache; keyed on the teacher, its sampler and the evaluation set, so the in-loop
evaluation and this job share them). A checkpoint is complete when RUN_DIR/checkpoints/latest names it or a later step,
or when its folder holds ard_checkpoint.json (see ard_scale/checkpoint/manager.py).

Each checkpoint is exported (EMA weights if eval.use_ema), its student sampled in S steps on the recipe's evaluation
set (classes; or prompts from eval.prompts_path / the data's captions, T5-encoded), decoded by the recipe's VAE and
scored: FID against eval.fid_reference_path or statistics computed once from data.path (cached), CLIP score for
text-to-image students. One process; on a GPU when there is one.

The recipe is the first checkpoint's config.yaml; dotted `eval.KEY=VALUE` overrides on the command line change its
evaluation section (the weights files, the number of samples, ...), and `SECTION.path=DIR` / `SECTION.size=NAME` where
the encoders and VAE are (text_encoder, pooled_encoder, pooled_encoder_2, qwen_encoder, vae: e.g. the T5 of a run
trained on precomputed text, whose recipe names none), as launchers/export.py takes them; nothing else: the student
is the checkpoint's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.checkpoint.layout import LATEST, atomic_write_text, step_of, tag_of  # noqa: E402
from ard_scale.checkpoint.safe_load import META  # noqa: E402
from ard_scale.config.loader import check_override_sections  # noqa: E402
from ard_scale.utils.cli import local_path, positive  # noqa: E402
from ard_scale.utils.strict_json import strict_json  # noqa: E402

METRICS = (("fid", "FID (lower is better)"), ("clip_score", "CLIP score (higher is better)"))
# the eval settings a result's numbers depend on (not every, batch_size, grid_size, cache_dir): recorded beside them
MEASURED_WITH = (
    "num_samples", "use_ema", "fid_inception_path", "fid_reference_path", "fid_reference_num_images", "clip_path",
    "clip_model", "prompts_path",
)  # fmt: skip
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


def plot(run_dir: Path, teacher: dict | None) -> Path:
    """RUN_DIR/eval/metrics.png: each metric against step, the teacher's value as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = read_results(run_dir)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], METRICS, strict=True):
        points = [(r["step"], r[key]) for r in results if key in r]  # a null (NaN) metric: a gap
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


def eval_settings(cfg) -> dict:
    """What a result was measured with (MEASURED_WITH of the recipe's eval section)."""
    return {key: getattr(cfg.eval, key) for key in MEASURED_WITH}


def evaluate_pending(
    run_dir: Path, evaluate: Evaluate, teacher: dict | None = None, settings: dict | None = None
) -> list[int]:
    """Evaluate each complete checkpoint that has no result yet, or one measured with other `settings` (its result
    records them; one from before they were recorded stands), write its JSON and the plot; the steps done."""
    done = []
    for step, folder in complete_checkpoints(run_dir):
        path = result_path(run_dir, step)
        if path.is_file():
            before = json.loads(path.read_text(encoding="utf-8")).get("settings")
            if settings is None or before is None or before == settings:
                continue
            changed = ", ".join(f"{k}: {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v)
            print(f"[eval] evaluating {folder.name} again: its result was measured with {changed}", file=sys.stderr)
        try:
            result = {"step": step, **evaluate(step, folder)}
            if settings is not None:
                result["settings"] = settings
        except Exception:
            if folder.is_dir():
                raise
            # the training run's retention (checkpoint.keep_last) removed it after it was listed: not an error
            print(
                f"[eval] skipping {folder.name}: the run removed it (checkpoint.keep_last) before it was evaluated",
                file=sys.stderr,
            )
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # strict JSON: a NaN FID or CLIP score (a sample with NaN pixels) is null, as in metrics.jsonl
        atomic_write_text(path, json.dumps(strict_json(result), indent=1, sort_keys=True))
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
    settings: dict | None = None,
) -> None:
    """Poll for complete checkpoints and evaluate each once, until `should_stop()` (checked between polls)."""
    while True:
        evaluate_pending(run_dir, evaluate, teacher, settings)
        if should_stop():
            return
        time.sleep(poll_seconds)  # the polling period, not synchronisation: a missed checkpoint is seen next poll


def student_evaluate(run_dir: Path, cfg, evaluate_sample: Callable, *, work_dir: Path, device: str = "cpu") -> Evaluate:
    """Evaluate = export the checkpoint (EMA weights if cfg.eval.use_ema), load the student without DeepSpeed and
    score its S-step sampler with `evaluate_sample(sample) -> metrics` (an EvalSetup's `run`)."""
    from ard_scale.checkpoint.export import export_student, load_exported_student

    def evaluate(step: int, folder: Path) -> dict:
        out_dir = export_student(
            run_dir, work_dir / folder.name, tag=folder.name, use_ema=cfg.eval.use_ema, replace=True
        )  # the evaluator's own scratch folder: a restarted evaluator writes it again
        student = load_exported_student(out_dir, verify=False).to(device).eval()  # just written
        return evaluate_sample(student.sample)

    return evaluate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("run_dir", type=local_path)
    parser.add_argument("overrides", nargs="*", help="evaluation settings, e.g. eval.fid_inception_path=PATH")
    parser.add_argument("--watch", action="store_true", help="keep polling for new checkpoints")
    parser.add_argument("--poll-seconds", type=positive, default=60.0)
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    run_dir = args.run_dir
    from ard_scale.pipeline import OVERRIDABLE, check_override_keys, check_prompt_encoders

    try:
        check_override_sections(
            args.overrides, ("eval", *OVERRIDABLE), tool="eval.py", why="the student is the checkpoint's"
        )
        check_override_keys([o for o in args.overrides if not o.startswith("eval.")], tool="eval.py")
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not (run_dir / "checkpoints").is_dir():
        if not args.watch:
            sys.exit(f"error: {run_dir / 'checkpoints'} does not exist: is {run_dir} a run directory?")
        # an eval job submitted beside its training job may start first: wait for the run's first checkpoint
        print(f"[eval] waiting for {run_dir / 'checkpoints'}: the run has saved nothing yet", file=sys.stderr)
    checkpoints = complete_checkpoints(run_dir)

    import tempfile

    from ard_scale.config import load_config

    def wait_for_first() -> Path:  # the recipe comes from the first complete checkpoint's config.yaml
        while not (found := complete_checkpoints(run_dir)):
            if not args.watch:
                sys.exit(f"error: no complete checkpoint in {run_dir / 'checkpoints'}")
            time.sleep(args.poll_seconds)
        return found[0][1]

    recipe = (checkpoints[0][1] if checkpoints else wait_for_first()) / "config.yaml"
    device = "cuda" if torch_cuda() else "cpu"
    try:
        cfg = load_config(recipe, args.overrides)
        check_prompt_encoders(cfg, run_dir, tool="eval")
        setup = build_setup(cfg, run_dir, device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    for skipped in setup.skipped:
        print(f"[eval] skipping {skipped}", file=sys.stderr)
    if setup.evaluator.fid is None and setup.evaluator.clip is None:
        sys.exit(
            f"error: nothing to evaluate offline: the recipe ({recipe}) gives no FID weights (eval.fid_inception_path) "
            "and no CLIP score weights (eval.clip_path, text-to-image students); pass them on eval.py's command "
            f"line, e.g. python launchers/eval.py {run_dir} eval.fid_inception_path=PATH"
        )
    teacher = setup.teacher_metrics()  # once per recipe: cached, keyed on the teacher, its sampler and the eval set
    with tempfile.TemporaryDirectory(prefix="ard_eval_") as work:
        evaluate = student_evaluate(run_dir, cfg, setup.run, work_dir=Path(work), device=device)
        try:
            settings = eval_settings(cfg)
            if args.watch:
                watch(run_dir, evaluate, teacher=teacher, poll_seconds=args.poll_seconds, settings=settings)
            else:
                print(evaluate_pending(run_dir, evaluate, teacher, settings))
        except ValueError as e:  # a damaged checkpoint, a LoRA base teacher that cannot be loaded: cause and fix
            sys.exit(f"error: {e}")


def build_setup(cfg, run_dir: Path, device: str):
    """The recipe's evaluation in this process: the teacher (its full sampler), T5, VAE and metrics, no DeepSpeed."""
    from ard_scale.trainer.build import build_codec_for, build_conditioner, build_schedule, build_teacher_model
    from ard_scale.trainer.evaluate import build_eval_setup

    teacher = build_teacher_model(cfg).to(device).eval().requires_grad_(False)
    codec = build_codec_for(cfg, teacher)
    return build_eval_setup(
        cfg,
        teacher=teacher,
        teacher_denoise=teacher,
        schedule=build_schedule(cfg, teacher.patch_size),
        conditioner=build_conditioner(cfg, teacher, device, for_eval=True),
        codec=codec,
        run_dir=run_dir,
        device=device,
    )


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
