"""CheckpointManager with real DeepSpeed ZeRO-3 on gloo (2 ranks), driven through tests/distributed/ckpt_train.py.

Three launches share one run directory (module fixture):
  A: 2 ranks train steps 1..8 uninterrupted, saving after steps 1, 2, 3 (keep_last=2); during the save after step 8
     rank 1 SIGKILLs itself (after engine.save_checkpoint, before the manager's barrier), so the launch fails;
  B: NEW processes, 2 ranks, resume from `latest` and train 4..6, saving after each, then sample with the
     in-process student;
  C: (universal test) convert step 6 with to_universal, resume on 1 rank and train 7..8.
"""

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ard_scale.checkpoint.export import export_student, load_exported_student
from ard_scale.checkpoint.manager import META, CheckpointManager
from ard_scale.checkpoint.safe_load import verify_dir
from ard_scale.checkpoint.universal import to_universal
from ard_scale.config import load_config, to_dict
from ard_scale.diffusion.condition import Condition
from ard_scale.utils.launch import torchrun

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ckpt_train.py")
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def launch(world: int, *args: str) -> subprocess.CompletedProcess:
    return torchrun(world, SCRIPT, *args)


def losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def listing(ckpt_dir: Path) -> dict[str, bool]:
    """{step tag: complete?}"""
    return {p.name: (p / META).is_file() for p in sorted(ckpt_dir.glob("step_*"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    run_dir = tmp / "run"
    a = launch(2, "--run-dir", str(run_dir), "--out", str(tmp / "a.jsonl"), "--steps", "8",
               "--save-at", "1", "2", "3", "8", "--kill-rank1-at", "8")  # fmt: skip
    assert a.returncode != 0, "rank 1 was meant to die inside the save after step 8"
    after_kill = {
        "latest": (run_dir / "checkpoints" / "latest").read_text(),
        "tags": listing(run_dir / "checkpoints"),
        "step8_files": sorted(p.name for p in (run_dir / "checkpoints" / "step_00000008").iterdir()),
    }
    b = launch(2, "--run-dir", str(run_dir), "--out", str(tmp / "b.jsonl"), "--steps", "6", "--resume",
               "--save-at", "4", "5", "6", "--sample-out", str(tmp / "sample.pt"))  # fmt: skip
    assert b.returncode == 0, b.stderr[-4000:]
    return {"tmp": tmp, "run_dir": run_dir, "a": losses(tmp / "a.jsonl"), "b": losses(tmp / "b.jsonl"), **after_kill}


def test_resume_in_new_processes_is_bit_identical(run):
    assert sorted(run["a"]) == list(range(1, 9)), "launch A logs every step it trained, the killed one included"
    assert sorted(run["b"]) == [4, 5, 6]
    for step in (4, 5, 6):  # exact: fp32, same 2 ranks, weights + AdamW + WarmupLR + per-rank RNG restored
        assert run["b"][step] == run["a"][step], (step, run["b"][step], run["a"][step])


def test_killed_rank_leaves_latest_on_the_previous_complete_checkpoint(run):
    assert run["latest"] == "step_00000003"
    # Retention kept the last 2 complete ones; the killed save is left incomplete (no META, no rank 1 file).
    assert run["tags"] == {"step_00000002": True, "step_00000003": True, "step_00000008": False}
    assert "rank_00000.pt" in run["step8_files"] and "rank_00001.pt" not in run["step8_files"]
    assert META not in run["step8_files"]
    # ... and it loads: launch B resumed from it (its first step is 4 and matched A bit for bit above).
    assert min(run["b"]) == 4


def test_retention_keeps_last_k_complete(run):
    ckpt_dir = run["run_dir"] / "checkpoints"
    assert (ckpt_dir / "latest").read_text() == "step_00000006"
    # The next save removed step_8 (incomplete, newer than latest: a failed save) before it wrote, so its files
    # never count against a new checkpoint's room.
    assert listing(ckpt_dir) == {"step_00000005": True, "step_00000006": True}


class NeverLoads:
    """Stands in for an engine: these checks must refuse before DeepSpeed is asked to load anything. Its module is
    no ARD student, so the LoRA-or-full check (checked first, test_manager.py) has nothing to compare."""

    module = torch.nn.Identity()

    def load_universal_checkpoint(self):
        return False

    def load_checkpoint(self, *args, **kwargs):
        raise AssertionError("load_checkpoint must not be reached")


def test_different_recipe_is_refused_naming_the_keys(run):
    changed = load_config(RECIPE, ["train.lr=2e-3", "student.num_causal_layers=3", "train.max_steps=99"])
    mgr = CheckpointManager(run["run_dir"], keep_last=2, config_dict=to_dict(changed))
    with pytest.raises(ValueError) as e:
        mgr.load_latest(NeverLoads())
    msg = str(e.value)
    assert "train.lr" in msg and "student.num_causal_layers" in msg and "checkpoint.allow_recipe_change=true" in msg
    assert "train.max_steps" not in msg  # extending a run is a resume, not a new recipe


def test_new_world_size_points_at_universal_checkpoint(run):
    changed = load_config(RECIPE, ["train.lr=2e-3"])
    mgr = CheckpointManager(run["run_dir"], keep_last=2, config_dict=to_dict(changed), allow_recipe_change=True)
    with pytest.warns(UserWarning, match="train.lr"), pytest.raises(ValueError, match="ard_scale.checkpoint.universal"):
        mgr.load_latest(NeverLoads())  # this process is 1 rank; the checkpoint has 2


def test_export_then_sample_reproduces_the_in_training_sampler(run, tmp_path):
    ref = torch.load(run["tmp"] / "sample.pt")
    out = export_student(run["run_dir"], tmp_path / "export", use_ema=False)
    assert {"config.json", "diffusion_pytorch_model.safetensors", "ard_heads.safetensors", "ard_config.json"} <= {
        p.name for p in out.iterdir()
    }
    student = load_exported_student(out)
    x = student.sample(ref["noise"], Condition(labels=ref["labels"]))
    torch.testing.assert_close(x, ref["out"], rtol=1e-5, atol=1e-6)

    spec = importlib.util.spec_from_file_location("ard_sample_launcher", ROOT / "launchers" / "sample.py")
    sample_launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample_launcher)

    folder, raw = tmp_path / "samples", tmp_path / "grid.pt"
    sample_launcher.main([str(out), "--class-labels", "1", "2", "3", "--out", str(folder), "--save-tensor", str(raw)])
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["grid.png", "sample_000.png", "sample_001.png", "sample_002.png"]
    assert torch.load(raw).shape == (3, *ref["out"].shape[1:])


def test_a_student_export_is_written_whole_or_not_at_all(run, tmp_path, monkeypatch):
    import ard_scale.checkpoint.export as export_module

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    out = tmp_path / "student"
    with monkeypatch.context() as m:
        m.setattr(export_module, "write_checksums", disk_full)  # the last file: everything else is written
        with pytest.raises(ValueError, match=f"no room for the student in {tmp_path}: the disk filled up"):
            export_student(run["run_dir"], out, use_ema=False)
    assert list(tmp_path.iterdir()) == []  # no half-written student to load later
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty; choose a new folder for the student"):
        export_student(run["run_dir"], out, use_ema=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    replaced = export_student(run["run_dir"], out, use_ema=False, replace=True)
    assert "notes.txt" not in {p.name for p in replaced.iterdir()} and load_exported_student(replaced) is not None


def test_an_export_that_will_not_fit_is_refused_before_it_writes(run, tmp_path, small_disk):
    from ard_scale.pipeline import export_pipeline

    def size(folder):
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    whole = export_pipeline(run["run_dir"], tmp_path / "pipe", use_ema=False)
    student, vae = size(whole / "transformer"), size(whole / "vae")
    disk = small_disk(student // 2 >> 10)
    with pytest.raises(ValueError, match=rf"no room for the student in {disk}: it takes about .* it was not written"):
        export_student(run["run_dir"], disk / "student", use_ema=False)
    assert os.listdir(disk) == []
    disk = small_disk((student + vae // 2) >> 10)  # room for the transformer, not for the VAE beside it
    with pytest.raises(ValueError, match=rf"no room for the pipeline's encoders and VAE in {disk}: it takes about"):
        export_pipeline(run["run_dir"], disk / "pipe", use_ema=False)
    assert os.listdir(disk) == []  # the transformer written first is gone with the rest
    print(f"student {student} B, VAE {vae} B")


def test_the_exported_pipeline_samples_class_labels_as_the_in_training_sampler(run, tmp_path):
    from PIL import Image

    from ard_scale.pipeline import ARDPipeline, export_pipeline

    ref = torch.load(run["tmp"] / "sample.pt")
    folder = export_pipeline(run["run_dir"], tmp_path / "pipe", use_ema=False)
    assert {"model_index.json", "recipe.yaml", "transformer", "scheduler", "vae"} <= {p.name for p in folder.iterdir()}
    pipe = ARDPipeline.from_pretrained(folder)
    out = pipe(class_labels=ref["labels"], latents=ref["noise"], output_type="latent")
    torch.testing.assert_close(out.latents, ref["out"], rtol=1e-5, atol=1e-6)
    images = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0)).images  # decoded by the VAE
    assert len(images) == 2 and isinstance(images[0], Image.Image) and images[0].size == (32, 32)
    with pytest.raises(ValueError, match="class-conditional: pass class_labels"):
        pipe("a prompt")


def test_a_pipeline_of_a_checkpoint_without_ema_says_it_holds_the_raw_weights(run, tmp_path):
    """model_index.json said "weights": "ema" whenever the EMA was asked for, also of a checkpoint with none (this
    run's), whose export holds the raw weights (as its transformer/ard_config.json said)."""
    from ard_scale.pipeline import export_pipeline

    with pytest.warns(UserWarning, match="has no EMA; using the raw weights"):
        folder = export_pipeline(run["run_dir"], tmp_path / "pipe")  # use_ema=True, the default
    index = json.loads((folder / "model_index.json").read_text())
    student = json.loads((folder / "transformer" / "ard_config.json").read_text())
    assert index["ard"]["source"]["weights"] == student["source"]["weights"] == "raw"


def test_a_base_teacher_given_for_a_full_student_is_said_to_be_ignored(run, tmp_path):
    """teacher= (--teacher) only serves LoRA students; for this run's full student it was dropped without a word."""
    with pytest.warns(UserWarning, match="teacher=.*elsewhere is ignored: .* holds a full student"):
        out = export_student(run["run_dir"], tmp_path / "student", use_ema=False, teacher=tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match="teacher=.*elsewhere is ignored: .* holds a full student"):
        load_exported_student(out, teacher=tmp_path / "elsewhere")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    from ard_scale.pipeline import export_pipeline

    return export_pipeline(run["run_dir"], tmp_path_factory.mktemp("export") / "pipe", use_ema=False)


@pytest.mark.parametrize(
    ("victim", "damage"),
    [
        ("transformer/diffusion_pytorch_model.safetensors", "truncate"),
        ("transformer/ard_heads.safetensors", "delete"),
        ("vae/diffusion_pytorch_model.safetensors", "truncate"),
        ("model_index.json", "garbage"),
        ("transformer/ard_config.json", "garbage"),
    ],
)
def test_a_damaged_pipeline_folder_is_an_error_naming_the_file_and_the_export_command(
    run, exported, tmp_path, victim, damage
):
    from ard_scale.pipeline import ARDPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(exported, folder)
    path = folder / victim
    if damage == "truncate":
        truncate(path)
    elif damage == "delete":
        path.unlink()
    else:
        path.write_text('{"ard": [')
    with pytest.raises(ValueError, match="is a damaged ARD export") as e:
        ARDPipeline.from_pretrained(folder)
    assert str(path) in str(e.value)
    command = "python launchers/export.py " + ("RUN_DIR" if victim.endswith("ard_config.json") else str(run["run_dir"]))
    assert command in str(e.value)


def test_a_damaged_pipeline_whose_config_names_no_source_still_gets_the_export_error(exported, tmp_path):
    from ard_scale.pipeline import ARDPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(exported, folder)
    ard_config = folder / "transformer" / "ard_config.json"
    ard_config.write_text(json.dumps({k: v for k, v in json.loads(ard_config.read_text()).items() if k != "source"}))
    truncate(folder / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="is a damaged ARD export") as e:
        ARDPipeline.from_pretrained(folder)
    assert "python launchers/export.py RUN_DIR --out FOLDER" in str(e.value)


def test_the_checksum_manifests_list_every_file_of_the_export(exported):
    def files_below(folder: Path) -> set[str]:
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"ard_checksums.json"}

    root = json.loads((exported / "ard_checksums.json").read_text())["files"]
    student = json.loads((exported / "transformer" / "ard_checksums.json").read_text())["files"]
    assert set(root) == {f for f in files_below(exported) if not f.startswith("transformer/")}
    assert set(student) == files_below(exported / "transformer")
    assert {"model_index.json", "recipe.yaml", "vae/diffusion_pytorch_model.safetensors"} <= set(root)
    assert {"diffusion_pytorch_model.safetensors", "ard_heads.safetensors", "ard_config.json"} <= set(student)


@pytest.mark.parametrize(
    "victim", ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
)
def test_a_flipped_byte_in_an_exported_weight_file_is_an_error_naming_it(run, exported, tmp_path, victim):
    from ard_scale.pipeline import ARDPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(exported, folder)
    flip_bytes(folder / victim)
    ARDPipeline.from_pretrained(folder, verify=False)  # the readers take the damaged numbers without a word
    with pytest.raises(ValueError, match="is a damaged ARD export") as e:
        ARDPipeline.from_pretrained(folder)
    assert f"{folder / victim}: crc32 " in str(e.value) and "(damaged bytes)" in str(e.value)
    assert f"python launchers/export.py {run['run_dir']}" in str(e.value)


def test_an_export_without_checksums_loads_with_a_warning(exported, tmp_path):
    from ard_scale.pipeline import ARDPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(exported, folder)
    for manifest in folder.rglob("ard_checksums.json"):
        manifest.unlink()
    with pytest.warns(UserWarning, match="has no ard_checksums.json .* cannot be verified"):
        ARDPipeline.from_pretrained(folder)


def test_universal_checkpoint_resumes_on_one_rank_without_a_jump(run):
    to_universal(run["run_dir"])  # step 6, written by 2 ranks
    c = launch(1, "--run-dir", str(run["run_dir"]), "--out", str(run["tmp"] / "c.jsonl"), "--steps", "8", "--resume")
    assert c.returncode == 0, c.stderr[-4000:]
    one = losses(run["tmp"] / "c.jsonl")
    assert sorted(one) == [7, 8]
    for step in (7, 8):  # same global batch; only the 1e-4 per-rank input noise and reduction order differ
        assert one[step] == pytest.approx(run["a"][step], rel=1e-4), (step, one[step], run["a"][step])


# -- damaged checkpoints are errors naming the file; the automatic resume falls back -------------


def flip_bytes(path: Path, count: int = 64) -> None:
    """Flip `count` bytes in the middle of `path` (tensor data: today's loaders read different numbers silently)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + count] = bytes(b ^ 0xFF for b in data[mid : mid + count])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


@pytest.fixture
def copy_of_run(run, tmp_path):
    """The shared run's directory copied, so a test can damage it (latest = step 6, step 5 intact before it)."""
    dst = tmp_path / "run"
    shutil.copytree(run["run_dir"], dst, ignore=shutil.ignore_patterns("*_universal", "latest_universal"))
    return dst


@pytest.mark.parametrize(
    ("victim", "damage", "what"),
    [
        ("zero_pp_rank_0_mp_rank_00_optim_states.pt", flip_bytes, "crc32"),
        ("rank_00000.pt", flip_bytes, "crc32"),
        ("rank_00001.pt", truncate, "bytes, the marker recorded"),
    ],
)
def test_damaged_file_is_an_error_naming_it(copy_of_run, victim, damage, what):
    tag_dir = copy_of_run / "checkpoints" / "step_00000006"
    damage(tag_dir / victim)
    with pytest.raises(ValueError, match=rf"{victim}: .*{what}"):
        verify_dir(tag_dir)
    with pytest.raises(ValueError, match=victim):  # a checkpoint asked for by name is never swapped for another
        export_student(copy_of_run, copy_of_run / "export", tag="step_00000006", use_ema=False)


def test_garbage_marker_and_recipe_are_clear_errors(copy_of_run):
    ckpt = copy_of_run / "checkpoints"
    (ckpt / "step_00000006" / META).write_text('{"step": 6, "world_si')
    (ckpt / "step_00000005" / "config.yaml").write_text("train: [lr: {\n")
    mgr = CheckpointManager(copy_of_run, keep_last=2, config_dict=to_dict(load_config(RECIPE)))
    with pytest.raises(ValueError, match="no intact checkpoint") as e:
        mgr.load_latest(NeverLoads())  # nothing intact to fall back to: DeepSpeed is never asked
    msg = str(e.value)
    assert f"step_00000006/{META} is not readable JSON" in msg
    assert "step_00000005/config.yaml: 14 bytes, the marker recorded" in msg


def test_automatic_resume_falls_back_to_the_previous_intact_checkpoint(run, copy_of_run):
    truncate(copy_of_run / "checkpoints" / "step_00000006" / "rank_00001.pt")  # only rank 1 checks this file
    out = run["tmp"] / "fallback.jsonl"
    d = launch(2, "--run-dir", str(copy_of_run), "--out", str(out), "--steps", "6", "--resume", "--save-at", "6")
    assert d.returncode == 0, d.stderr[-4000:]
    assert "resuming from step_00000005" in d.stderr and "rank_00001.pt" in d.stderr  # the warning says what and why
    resumed = losses(out)
    assert resumed == {6: run["a"][6]}  # continued from step 5 exactly as the uninterrupted launch A did
    # The damaged step 6 was replaced by the new save of step 6 (not skipped as "already saved"), and is intact.
    assert (copy_of_run / "checkpoints" / "latest").read_text() == "step_00000006"
    verify_dir(copy_of_run / "checkpoints" / "step_00000006")
