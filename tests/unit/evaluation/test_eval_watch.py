"""launchers/eval.py polling: each complete checkpoint (checkpoint manager layout) is evaluated exactly once, across a
crash and a restart; incomplete and universal folders are skipped; results, teacher values and the plot are written."""

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

LAUNCHER = Path(__file__).resolve().parents[3] / "launchers" / "eval.py"


def load_launcher():
    """A fresh module each call: a restarted job keeps nothing in memory."""
    spec = importlib.util.spec_from_file_location("ard_eval_launcher", LAUNCHER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_checkpoint(run_dir, step, *, meta):
    d = run_dir / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "rank_00000.pt").write_bytes(b"")
    if meta:
        (d / "ard_checkpoint.json").write_text(json.dumps({"step": step}))
    return d


def set_latest(run_dir, step):
    (run_dir / "checkpoints" / "latest").write_text(f"step_{step:08d}")


class CountingEvaluate:
    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, step, folder):
        assert folder.name == f"step_{step:08d}"
        if step == self.fail_at:
            raise RuntimeError("preempted")
        self.calls.append(step)
        return {"fid": 100.0 / step, "clip_score": 20.0 + step / 100}


def test_each_checkpoint_evaluated_exactly_once_across_restart(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 100, meta=True)
    fake_checkpoint(run, 200, meta=False)  # complete: latest names it (meta written by an older manager, say)
    fake_checkpoint(run, 300, meta=False)  # being written: neither meta nor latest
    (run / "checkpoints" / "step_00000200_universal").mkdir()
    set_latest(run, 200)

    first = CountingEvaluate(fail_at=200)  # the job dies while evaluating step 200
    with pytest.raises(RuntimeError, match="preempted"):
        load_launcher().evaluate_pending(run, first)
    assert first.calls == [100]
    assert not (run / "eval" / "step_00000200.json").exists()

    mod = load_launcher()  # restarted job
    second = CountingEvaluate()
    teacher = {"fid": 0.5, "clip_score": 30.0}  # the teacher's cached values (trainer/evaluate.py computes them)
    assert mod.evaluate_pending(run, second, teacher) == [200]
    assert second.calls == [200]

    (run / "checkpoints" / "step_00000300" / "ard_checkpoint.json").write_text("{}")  # the save finished
    fake_checkpoint(run, 400, meta=False)  # not complete yet
    polls = []

    def should_stop():
        polls.append(1)
        if len(polls) == 1:  # between polls the trainer publishes step 400
            set_latest(run, 400)
        return len(polls) == 3

    mod.watch(run, second, teacher=teacher, poll_seconds=0, should_stop=should_stop)
    assert second.calls == [200, 300, 400]

    third = CountingEvaluate()  # another restart: nothing left to do
    load_launcher().evaluate_pending(run, third)
    assert third.calls == []

    results = load_launcher().read_results(run)
    assert [r["step"] for r in results] == [100, 200, 300, 400]
    assert results[1] == {"step": 200, "fid": 0.5, "clip_score": 22.0}
    with Image.open(run / "eval" / "metrics.png") as img:
        assert img.format == "PNG" and img.width > 100


def test_a_rerun_with_other_eval_settings_evaluates_again_and_records_them(tmp_path, capsys):
    run = tmp_path / "run"
    fake_checkpoint(run, 100, meta=True)
    mod, counting = load_launcher(), CountingEvaluate()
    four, eight = {"num_samples": 4, "use_ema": True}, {"num_samples": 8, "use_ema": True}
    assert mod.evaluate_pending(run, counting, settings=four) == [100]
    assert mod.evaluate_pending(run, counting, settings=four) == []  # measured with these: it stands
    assert mod.evaluate_pending(run, counting, settings=eight) == [100]
    assert "evaluating step_00000100 again: its result was measured with num_samples: 4 -> 8" in capsys.readouterr().err
    assert counting.calls == [100, 100] and mod.read_results(run)[0]["settings"] == eight
    fake_checkpoint(run, 200, meta=True)
    (run / "eval" / "step_00000200.json").write_text(json.dumps({"step": 200, "fid": 1.0}))  # before they were kept
    assert mod.evaluate_pending(run, counting, settings=eight) == []


def test_student_evaluate_exports_each_tag_and_runs_the_evaluator(tmp_path, monkeypatch, tiny_features):
    """The launcher's glue: checkpoint tag -> export (EMA as configured) -> student.sample through the Evaluator.
    The export itself (DeepSpeed files) is ard_scale.checkpoint's and is stubbed here with a debug student."""
    from types import SimpleNamespace

    import torch

    import ard_scale.checkpoint.export as export
    from ard_scale.config import EvalConfig
    from ard_scale.config.ard import ARDConfig
    from ard_scale.diffusion.schedules import VPSchedule
    from ard_scale.evaluation.evaluator import Evaluator
    from ard_scale.evaluation.fid import FID
    from ard_scale.evaluation.generate import class_conditional_generate_fn
    from ard_scale.models.student import ARDStudent
    from ard_scale.models.teachers import build_teacher

    teacher = build_teacher("dit", "debug", in_channels=3, out_channels=3)
    student = ARDStudent(teacher, ARDConfig(num_steps=2, num_causal_layers=1), VPSchedule()).eval()
    exported = []
    monkeypatch.setattr(
        export,
        "export_student",
        lambda run, out, *, tag, use_ema, replace: exported.append((tag, use_ema, replace)) or Path(out),
    )  # replace: a restarted evaluator exports over its own scratch folder
    monkeypatch.setattr(export, "load_exported_student", lambda path, *, verify: student)

    run = tmp_path / "run"
    fake_checkpoint(run, 10, meta=True)
    fake_checkpoint(run, 20, meta=True)
    side = teacher.sample_size
    ref = FID(tiny_features).reference_from_images(
        [torch.rand(32, 3, side, side, generator=torch.Generator().manual_seed(0))]
    )
    eval_cfg = EvalConfig(num_samples=4, batch_size=2, use_ema=True)
    evaluator = Evaluator(eval_cfg, fid=FID(tiny_features, ref))

    def evaluate_sample(sample):  # what EvalSetup.run does for a class-conditional pixel-space student
        shape = (3, side, side)
        return evaluator.run(class_conditional_generate_fn(sample, noise_shape=shape, num_classes=teacher.num_classes))

    mod = load_launcher()
    evaluate = mod.student_evaluate(run, SimpleNamespace(eval=eval_cfg), evaluate_sample, work_dir=tmp_path / "w")
    with torch.no_grad():
        assert mod.evaluate_pending(run, evaluate) == [10, 20]
    assert exported == [("step_00000010", True, True), ("step_00000020", True, True)]
    results = mod.read_results(run)
    assert [r["step"] for r in results] == [10, 20] and all(r["fid"] > 0 and r["num_samples"] == 4 for r in results)


def test_main_errors_name_what_is_missing(tmp_path):
    import shutil

    mod = load_launcher()
    with pytest.raises(SystemExit, match="checkpoints"):
        mod.main([str(tmp_path / "nowhere")])
    run = tmp_path / "run"
    folder = fake_checkpoint(run, 10, meta=True)
    recipe = next(p for p in sorted((LAUNCHER.parents[1] / "recipes").glob("*.yaml")) if "tiny" in p.name)
    shutil.copy(recipe, folder / "config.yaml")  # the recipe the checkpoint was written under; it sets no FID files
    with pytest.raises(SystemExit, match="fid_inception_path"):
        mod.main([str(run)])


def test_watch_waits_for_a_run_that_has_saved_nothing_yet(tmp_path, monkeypatch, capsys):
    """An eval job may start before its training job has made RUN_DIR/checkpoints: --watch waits for the first
    checkpoint (here it appears during the first poll), then reads its recipe; without --watch that is an error."""
    import shutil
    import types

    mod = load_launcher()
    run = tmp_path / "run"
    recipe = next(p for p in sorted((LAUNCHER.parents[1] / "recipes").glob("*.yaml")) if "tiny" in p.name)

    def first_save(seconds):  # the run saves while the watcher sleeps
        shutil.copy(recipe, fake_checkpoint(run, 10, meta=True) / "config.yaml")

    monkeypatch.setattr(mod, "time", types.SimpleNamespace(sleep=first_save))
    with pytest.raises(SystemExit, match="nothing to evaluate offline"):  # it read the recipe of step 10
        mod.main([str(run), "--watch", "--poll-seconds", "1"])
    assert f"waiting for {run / 'checkpoints'}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist: is"):
        mod.main([str(tmp_path / "other")])


def test_main_takes_eval_overrides_and_says_to_pass_them_there(tmp_path):
    """The message said "set eval.fid_inception_path ... in the recipe", but eval.py reads the checkpoint's
    config.yaml: its eval section is set on eval.py's command line, and nothing else is."""
    import shutil

    mod = load_launcher()
    run = tmp_path / "run"
    folder = fake_checkpoint(run, 10, meta=True)
    shutil.copy(LAUNCHER.parents[1] / "recipes" / "tiny_cpu.yaml", folder / "config.yaml")  # no FID files
    with pytest.raises(SystemExit, match=rf"on eval.py's command line, e.g. python launchers/eval.py {run} eval\."):
        mod.main([str(run)])
    with pytest.raises(SystemExit, match=r"eval.py overrides may set only the eval, text_enc.*\['train.max_steps=3'\]"):
        mod.main([str(run), "eval.num_samples=8", "train.max_steps=3"])
    built = []

    def build_setup(cfg, run_dir, device):
        built.append(cfg.eval)
        raise ValueError("stop here")

    mod.build_setup = build_setup
    with pytest.raises(SystemExit, match="error: stop here"):
        mod.main([str(run), "eval.fid_inception_path=/weights/inception.pth", "eval.num_samples=8"])
    assert (built[0].fid_inception_path, built[0].num_samples) == ("/weights/inception.pth", 8)
    with pytest.raises(SystemExit, match=r"eval.num_sample"):  # a mistyped key: the recipe check's own message
        mod.main([str(run), "eval.num_sample=8"])


def test_a_checkpoint_the_run_removes_before_its_turn_is_skipped_not_a_crash(tmp_path, capsys):
    """eval.py --watch beside a running run: retention (checkpoint.keep_last) deletes a checkpoint the watcher listed
    while it evaluated an earlier one; the watcher died with a traceback from the export."""
    run = tmp_path / "run"
    for step in (1, 2, 3):
        fake_checkpoint(run, step, meta=True)
    set_latest(run, 3)

    def evaluate(step, folder):
        if step == 1:  # while step 1 is evaluated, the trainer saves and removes step 2
            import shutil

            shutil.rmtree(run / "checkpoints" / "step_00000002")
        if not folder.is_dir():
            raise ValueError(f"checkpoint tag {folder.name!r}: {folder} does not exist")
        return {"clip_score": float(step)}

    assert load_launcher().evaluate_pending(run, evaluate) == [1, 3]
    assert "skipping step_00000002: the run removed it" in capsys.readouterr().err

    def damaged(step, folder):
        raise ValueError(f"checkpoint {folder} is damaged")

    fake_checkpoint(run, 4, meta=True)
    with pytest.raises(ValueError, match="damaged"):  # a checkpoint still there that fails stays an error
        load_launcher().evaluate_pending(run, damaged)


def test_a_nan_metric_is_written_as_null_and_the_results_still_plot(tmp_path):
    """A checkpoint whose samples hold NaN pixels scores FID NaN (evaluation/evaluator.py): json.dumps wrote a bare NaN,
    which is not JSON (jq, JavaScript refuse the file); it is null, as in metrics.jsonl, and the plot leaves it out."""
    run = tmp_path / "run"
    fake_checkpoint(run, 100, meta=True)
    fake_checkpoint(run, 200, meta=True)
    scores = {100: {"fid": float("nan"), "clip_score": 21.0}, 200: {"fid": 4.0, "clip_score": float("inf")}}
    mod = load_launcher()
    assert mod.evaluate_pending(run, lambda step, folder: scores[step], {"fid": 0.5, "clip_score": 30.0}) == [100, 200]

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = [json.loads(p.read_text(), parse_constant=refuse) for p in sorted((run / "eval").glob("step_*.json"))]
    assert written == [{"step": 100, "fid": None, "clip_score": 21.0}, {"step": 200, "fid": 4.0, "clip_score": None}]
    assert mod.read_results(run) == written and mod.evaluate_pending(run, CountingEvaluate()) == []  # both stand
    with Image.open(run / "eval" / "metrics.png") as img:
        assert img.format == "PNG"


def test_a_run_on_precomputed_text_is_evaluated_with_the_encoder_named_on_the_command_line(precomputed_run):
    """A run trained on precomputed text whose recipe names no T5 could not be evaluated offline: the Conditioner said
    "set text_encoder.path", which eval.py refused ("may set only the eval section"). It takes the encoders' path or
    size as export.py does, and refuses one the shards were not encoded with."""
    run, t5, other = precomputed_run
    mod = load_launcher()
    with pytest.raises(SystemExit, match=rf"names no text_encoder .* e.g. python launchers/eval.py {run} text_enc"):
        mod.main([str(run)])
    with pytest.raises(SystemExit, match=r"evaluation's text encoders are not those .* holds other weights than the"):
        mod.main([str(run), f"text_encoder.path={other}"])
    with pytest.raises(SystemExit, match=r"eval.py overrides may set only where the encoders and VAE are"):
        mod.main([str(run), f"text_encoder.path={t5}", "text_encoder.max_length=20"])
    built = []

    def build_setup(cfg, run_dir, device):
        built.append(cfg.text_encoder)
        raise ValueError("stop here")

    mod.build_setup = build_setup
    with pytest.raises(SystemExit, match="error: stop here"):  # the shards' own T5: on to the evaluation
        mod.main([str(run), f"text_encoder.path={t5}"])
    assert built[0].path == str(t5)
