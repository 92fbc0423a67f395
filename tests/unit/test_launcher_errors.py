"""Every launcher (and `python -m ard_scale.plan`) run from the shell turns a user's mistake (a missing recipe, path
or source) into one `error: ...` line naming the cause, and a non-zero exit, not a traceback."""

import os
import runpy
import sys

import pytest

from ard_scale.utils.launch import ROOT

# (launcher, its arguments, what the error says); {tmp} is the test's empty folder, {t5} a debug T5 folder.
CASES = {
    "build_shards": ("build_shards", ["{tmp}/no_such_folder", "{tmp}/shards"], "neither a folder nor an existing"),
    "dump_trajectories": (
        "dump_trajectories",
        ["recipes/tiny_cpu.yaml", "--teacher", "{tmp}/no_teacher", "--out", "{tmp}/dump", "--num-samples", "1"],
        "teacher path {tmp}/no_teacher is not a folder",
    ),
    "fit_teacher": ("fit_teacher", ["{tmp}/no_recipe.yaml", "--out", "{tmp}/teacher"], "cannot read the recipe file"),
    "precompute_text-no_t5": (
        "precompute_text",
        ["bundled:digits/mds", "{tmp}/text", "--t5", "{tmp}/no_t5"],  # the shards are checked first
        "T5 path '{tmp}/no_t5' is not a local folder",
    ),
    "precompute_text-no_shards": (  # the encoder is there; the shards are not
        "precompute_text",
        ["{tmp}/no_shards", "{tmp}/text", "--t5", "{t5}"],
        "MDS path '{tmp}/no_shards' is not an existing folder",
    ),
    "train": ("train", ["{tmp}/no_recipe.yaml"], "cannot read the recipe file"),
    "sample": ("sample", ["{tmp}/no_export", "--prompt", "a cat", "--out", "{tmp}/out"], "is not an ARD export folder"),
    "sample-prompts_file": (
        "sample",
        ["{tmp}/no_export", "--prompts-file", "{tmp}/no_prompts.txt", "--out", "{tmp}/out"],
        "cannot read --prompts-file {tmp}/no_prompts.txt",
    ),
    "sample-prompts_file-home": (  # `--opt=~/x`, which no shell expands, is read as the home folder's x
        "sample",
        ["{tmp}/no_export", "--prompts-file=~/no_prompts.txt", "--out", "{tmp}/out"],
        "cannot read --prompts-file {tmp}/no_prompts.txt",
    ),
    "export": ("export", ["{tmp}/no_run"], "no complete checkpoint to export"),
    "export-home": ("export", ["--out=~/pipe", "~/no_run"], "{tmp}/no_run"),
    "export-link": (  # it exported the student folder and said nothing of --link, before reading the run
        "export",
        ["{tmp}/no_run", "--student-only", "--link"],
        "--link links a pipeline's encoders and VAE, and a --student-only folder holds neither: leave out --link",
    ),
    "eval": ("eval", ["{tmp}/no_run"], "is {tmp}/no_run a run directory?"),
    "plan": ("-m ard_scale.plan", ["{tmp}/no_recipe.yaml", "--gpus", "8"], "cannot read the recipe file"),
    "universal": ("-m ard_scale.checkpoint.universal", ["{tmp}/no_run"], "has no complete checkpoint to convert"),
}


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> str:
    from ard_scale.models.text_encoder import build_t5

    path = tmp_path_factory.mktemp("t5")
    encoder, tokenizer = build_t5("debug")
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_launcher_reports_a_user_error_in_one_line(case, tmp_path, monkeypatch, capsys, request):
    launcher, args, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    t5 = request.getfixturevalue("t5_folder") if "{t5}" in args else None
    monkeypatch.chdir(ROOT)
    if any("~" in a for a in args):
        monkeypatch.setenv("HOME", str(work))
    monkeypatch.setattr(sys, "argv", [launcher, *(a.format(tmp=work, t5=t5) for a in args)])
    with pytest.raises(SystemExit) as stopped:
        if launcher.startswith("-m "):  # as `python -m` runs it: not a module this process imported already
            monkeypatch.delitem(sys.modules, launcher[3:], raising=False)
            runpy.run_module(launcher[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / "launchers" / f"{launcher}.py"), run_name="__main__")
    code = stopped.value.code
    text = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None)
    assert text.startswith("error") and message.format(tmp=work) in text, text
    assert not any(work.iterdir())  # nothing half-written


def test_build_shards_of_a_folder_without_valid_samples_says_only_the_error(tmp_path, monkeypatch, capsys):
    """It printed "wrote {'webdataset': 0, 'mds': 0} to ..." and the skip count before "nothing written"."""
    from PIL import Image

    source = tmp_path / "img"
    source.mkdir()
    Image.new("RGB", (4, 4)).save(source / "a.png")  # no a.txt: skipped for its missing caption
    monkeypatch.setattr(sys, "argv", ["build_shards", str(source), str(tmp_path / "shards")])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "launchers" / "build_shards.py"), run_name="__main__")
    assert stopped.value.code == (
        f"error: no valid sample in {str(source)!r} (skipped 1: 1 missing caption); nothing written. A folder holds "
        "x.jpg (or .png, ...) with its caption in x.txt; a .csv/.jsonl lists path and caption"
    )
    assert capsys.readouterr() == ("", "")  # the error line alone (SystemExit prints it), no progress bar or counts
    assert os.listdir(tmp_path) == ["img"]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_train_says_a_recipe_warning_on_rank_0_only(rank, tmp_path, monkeypatch, recwarn):
    """Every rank reads the same recipe: one line per warning, not one per rank (the error stops them all)."""
    from ard_scale.config import ConfigWarning

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RANK", rank)
    args = ["recipes/tiny_cpu.yaml", "train.replay_times=3", f"data.path={tmp_path / 'no_data'}"]
    monkeypatch.setattr(sys, "argv", ["train", *args])
    with pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / "launchers" / "train.py"), run_name="__main__")
    said = [str(w.message) for w in recwarn if issubclass(w.category, ConfigWarning)]
    assert said == (["train.replay_times is ignored with trajectory_source 'online'"] if rank == "0" else [])


# (launcher, its arguments with one bad number, the usage line argparse prints); {tmp}: the test's empty folder.
# Before, these ran: precompute_text --batch-size 0 said "no sample in 'bundled:digits/mds'" (the shards are fine),
# fit_teacher --resolution 0 fitted at 8 px, --steps 0 fitted and then divided by zero, plan --gpu-mem-gb -1 printed
# "DOES NOT FIT in -1 GB".
BAD_NUMBERS = {
    "precompute_text-batch_size": (
        "precompute_text",
        ["bundled:digits/mds", "{tmp}/text", "--recipe", "recipes/tiny_t2i_cpu.yaml", "--batch-size", "0"],
        "argument --batch-size: must be an integer >= 1, got 0",
    ),
    "precompute_text-max_length": (
        "precompute_text",
        ["bundled:digits/mds", "{tmp}/text", "--recipe", "recipes/tiny_t2i_cpu.yaml", "--max-length", "-5"],
        "argument --max-length: must be an integer >= 1, got -5",
    ),
    "fit_teacher-resolution": (
        "fit_teacher",
        ["--out", "{tmp}/teacher", "--resolution", "0", "--steps", "1"],
        "argument --resolution: must be an integer >= 1, got 0",
    ),
    "fit_teacher-steps": ("fit_teacher", ["--out", "{tmp}/teacher", "--steps", "0"], "argument --steps: must be an"),
    "fit_teacher-lr": ("fit_teacher", ["--out", "{tmp}/t", "--lr", "nan"], "argument --lr: must be a finite number"),
    "dump_trajectories-substeps": (
        "dump_trajectories",
        ["recipes/tiny_cpu.yaml", "--out", "{tmp}/dump", "--num-samples", "1", "--substeps", "0"],
        "argument --substeps: must be an integer >= 1, got 0",
    ),
    "demo-nproc": ("demo", ["--nproc", "0"], "argument --nproc: must be an integer >= 1, got 0"),
    "eval-poll_seconds": ("eval", ["{tmp}/run", "--poll-seconds", "-1"], "argument --poll-seconds: must be a finite"),
    "plan-gpu_mem": (
        "-m ard_scale.plan",
        ["recipes/tiny_cpu.yaml", "--gpus", "2", "--gpu-mem-gb", "-1"],
        "argument --gpu-mem-gb: must be a finite number > 0, got -1",
    ),
    "plan-gpus": ("-m ard_scale.plan", ["recipes/tiny_cpu.yaml", "--gpus", "x"], "argument --gpus: expected an"),
}


@pytest.mark.parametrize("case", sorted(BAD_NUMBERS))
def test_a_launcher_refuses_a_bad_number_before_any_work(case, tmp_path, monkeypatch, capsys):
    launcher, args, message = BAD_NUMBERS[case]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [launcher, *(a.format(tmp=tmp_path) for a in args)])
    with pytest.raises(SystemExit) as stopped:
        if launcher.startswith("-m "):
            monkeypatch.delitem(sys.modules, launcher[3:], raising=False)
            runpy.run_module(launcher[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / "launchers" / f"{launcher}.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err  # argparse's usage error
    assert message in err.splitlines()[-1], err
    assert not any(tmp_path.iterdir())  # refused before writing anything
