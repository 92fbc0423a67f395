"""launchers/demo.py exports the student it compares into a folder of its own, which it replaces at every run: it
used RUN_DIR/export, the folder under which launchers/export.py writes a user's exports by default
(RUN_DIR/export/<tag>), so rerunning the demo deleted them."""

import importlib.util
import sys

from ard_scale.config import load_config
from ard_scale.utils.launch import ROOT

LAUNCHERS = ROOT / "launchers"


def _launcher(name: str):
    spec = importlib.util.spec_from_file_location(f"ard_{name}_launcher", LAUNCHERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rerunning_the_demo_keeps_the_pipeline_export_py_wrote(tmp_path, monkeypatch):
    sys.path.insert(0, str(LAUNCHERS))
    import fit_teacher

    monkeypatch.chdir(tmp_path)  # the demo changes into the repository; the test's folder comes back after it
    teacher, run_dir = tmp_path / "teacher", tmp_path / "run"
    fit_teacher.main(["--out", str(teacher), "--steps", "1", "--sample-steps", "1"])
    overrides = [f"teacher.path={teacher}", f"checkpoint.run_dir={run_dir}", "train.max_steps=1", "checkpoint.every=1"]
    demo = _launcher("demo")
    demo.main(["--nproc", "1", *overrides])
    pipeline = _launcher("export").main([str(run_dir)])  # the README's command, its default --out
    assert pipeline == run_dir / "export" / "step_00000001" and (pipeline / "model_index.json").is_file()
    demo.compare(load_config(ROOT / "recipes" / "demo_digits.yaml", overrides), run_dir)  # what a rerun exports
    assert (pipeline / "model_index.json").is_file()
    assert (run_dir / "demo.png").is_file() and (run_dir / demo.STUDENT_DIR / "ard_config.json").is_file()
