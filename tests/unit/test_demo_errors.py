"""launchers/demo.py stops on a user's mistake with one `error:` line and a non-zero exit, as train.py does, not with
the traceback of its torchrun subprocess."""

import fcntl
import importlib.util
import os
import sys

import pytest

from ard_scale.utils.launch import ROOT

LAUNCHERS = ROOT / "launchers"


def _demo():
    spec = importlib.util.spec_from_file_location("ard_demo_launcher", LAUNCHERS / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """The demo's teacher (launchers/fit_teacher.py's defaults: the digits at 8 px, 10 classes), fitted for 1 step."""
    sys.path.insert(0, str(LAUNCHERS))
    import fit_teacher

    out = tmp_path_factory.mktemp("teacher")
    fit_teacher.main(["--out", str(out), "--steps", "1", "--sample-steps", "1"])
    return str(out)


def test_a_missing_path_is_one_error_line_before_training(teacher, tmp_path, monkeypatch, capfd):
    """It launched torchrun, whose ranks said the error and whose ChildFailedError and the demo's CalledProcessError
    tracebacks followed it."""
    monkeypatch.chdir(tmp_path)  # the demo changes into the repository; the test's folder comes back after it
    run_dir, data = tmp_path / "run", tmp_path / "no_shards"
    with pytest.raises(SystemExit) as stopped:
        _demo().main([f"teacher.path={teacher}", f"checkpoint.run_dir={run_dir}", f"data.path={data}"])
    assert stopped.value.code == (
        f"error: invalid config {ROOT / 'recipes' / 'demo_digits.yaml'}: 1 problem\n"
        f"  - data.path: webdataset path '{data}' does not exist: give a folder of .tar shards, a shards.json index "
        "or a brace pattern (launchers/build_shards.py writes the first two)"
    )
    assert "Traceback" not in capfd.readouterr().err and not run_dir.exists()


def test_a_failed_training_run_is_one_error_line(teacher, tmp_path, monkeypatch, capfd):
    """The run folder is in use: train.py says so and exits 1, and the demo stops with that status in one line
    (before, a CalledProcessError traceback)."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fd = os.open(run_dir / ".ard_run.lock", os.O_RDWR | os.O_CREAT, 0o644)  # another run holds the folder
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(SystemExit) as stopped:
            _demo().main(["--nproc", "1", f"teacher.path={teacher}", f"checkpoint.run_dir={run_dir}"])
    finally:
        os.close(fd)
    assert stopped.value.code == "error: training stopped with exit status 1 (its error is above); nothing was exported"
    err = capfd.readouterr().err
    assert f"error: {run_dir} is in use by another training run" in err
    assert not (run_dir / _demo().STUDENT_DIR).exists()


def test_a_named_teacher_size_is_one_error_line(tmp_path, monkeypatch, capfd):
    """teacher.size=debug teacher.path=null (the recipe check's 'set exactly one') stopped with a TypeError traceback:
    the demo reads and compares the fitted teacher at teacher.path."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        _demo().main(["teacher.size=debug", "teacher.path=null", f"checkpoint.run_dir={run_dir}"])
    assert stopped.value.code == (
        "error: teacher.size=debug: the demo distils the teacher launchers/fit_teacher.py fits on the digits, kept at "
        "teacher.path; drop the teacher.size and teacher.path overrides (or give teacher.path=DIR to fit or reuse it "
        "there), or distil a named size with launchers/train.py"
    )
    assert "Traceback" not in capfd.readouterr().err and not run_dir.exists()


def test_a_teacher_path_with_other_files_is_one_error_line(tmp_path, monkeypatch, capfd):
    """fit_teacher.py refuses an --out that holds files: the demo, which fits into teacher.path when it holds no
    teacher, says so in its own terms (the folder a fit killed before it wrote transformer/config.json, say)."""
    monkeypatch.chdir(tmp_path)
    teacher_dir = tmp_path / "teacher"
    (teacher_dir / "scheduler").mkdir(parents=True)
    with pytest.raises(SystemExit) as stopped:
        _demo().main([f"teacher.path={teacher_dir}", f"checkpoint.run_dir={tmp_path / 'run'}"])
    assert stopped.value.code == (
        f"error: teacher.path {teacher_dir} holds files but no fitted teacher (no transformer/config.json); remove it "
        "to fit the teacher there, or give teacher.path=DIR (a new folder or a fitted teacher)"
    )
    assert "Traceback" not in capfd.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
