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
    teacher = mod.teacher_metrics(run, lambda: {"fid": 0.5, "clip_score": 30.0})
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


def test_teacher_metrics_computed_once(tmp_path):
    mod = load_launcher()
    calls = []

    def teacher():
        calls.append(1)
        return {"fid": 3.0}

    assert mod.teacher_metrics(tmp_path, teacher) == {"fid": 3.0}
    assert load_launcher().teacher_metrics(tmp_path, teacher) == {"fid": 3.0}
    assert len(calls) == 1
