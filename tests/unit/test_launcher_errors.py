"""Every launcher (and `python -m ard_scale.plan`) run from the shell turns a user's mistake (a missing recipe, path
or source) into one `error: ...` line naming the cause, and a non-zero exit, not a traceback."""

import runpy
import sys

import pytest

from ard_scale.utils.launch import ROOT

CASES = {
    "build_shards": (["{tmp}/no_such_folder", "{tmp}/shards"], "neither a folder nor an existing .csv/.jsonl"),
    "dump_trajectories": (
        ["recipes/tiny_cpu.yaml", "--teacher", "{tmp}/no_teacher", "--out", "{tmp}/dump", "--num-samples", "1"],
        "teacher path {tmp}/no_teacher is not a folder",
    ),
    "fit_teacher": (["{tmp}/no_recipe.yaml", "--out", "{tmp}/teacher"], "cannot read the recipe file"),
    "precompute_text": (
        ["{tmp}/no_shards", "{tmp}/text", "--t5", "{tmp}/no_t5"],
        "T5 path '{tmp}/no_t5' is not a local folder",
    ),
    "train": (["{tmp}/no_recipe.yaml"], "cannot read the recipe file"),
    "sample": (["{tmp}/no_export", "--prompt", "a cat"], "is not an ARD export folder"),
    "export": (["{tmp}/no_run"], "no complete checkpoint to export"),
    "eval": (["{tmp}/no_run"], "is {tmp}/no_run a run directory?"),
    "-m ard_scale.plan": (["{tmp}/no_recipe.yaml", "--gpus", "8"], "cannot read the recipe file"),
}


@pytest.mark.parametrize("launcher", sorted(CASES))
def test_a_launcher_reports_a_user_error_in_one_line(launcher, tmp_path, monkeypatch, capsys):
    args, message = CASES[launcher]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [launcher, *(a.format(tmp=tmp_path) for a in args)])
    with pytest.raises(SystemExit) as stopped:
        if launcher.startswith("-m "):
            runpy.run_module(launcher[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / "launchers" / f"{launcher}.py"), run_name="__main__")
    code = stopped.value.code
    text = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None)
    assert text.startswith("error") and message.format(tmp=tmp_path) in text, text
    assert not any(tmp_path.iterdir())  # nothing half-written
