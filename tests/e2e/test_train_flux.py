"""The debug FLUX.1 recipe trained end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo, fp32): the pooled CLIP and T5
encoders, the distilled guidance embedding, the VAE shift, dynamic shift; loss falls, resume is bit-identical, and
the export samples as the checkpoint's student does."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from recipe_runs import (
    assert_loss_falls_and_resume_is_bit_identical,
    assert_samples_as_the_checkpoint,
    checkpoint_student,
    export_of,
    straight_and_resumed,
    train,
)

from ard_scale.trainer.build import build_conditioner

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "recipes/tiny_flux_cpu.yaml"


def launcher(name: str):
    """`launchers/NAME.py`'s main, loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"ard_{name}_launcher", ROOT / "launchers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return straight_and_resumed(RECIPE, tmp_path_factory.mktemp("flux"))


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_flux_loss_falls_and_resume_is_bit_identical(runs):
    assert_loss_falls_and_resume_is_bit_identical(runs)


def test_flux_export_samples_as_the_checkpoint_student(runs, tmp_path):
    exported, sampling = export_of(runs["full"], tmp_path / "export")
    assert sampling == {"latent_shape": [4, 8, 8], "guidance": 3.5}
    checkpoint = checkpoint_student(RECIPE, runs["full"])
    cfg, teacher, _ = checkpoint
    conditioner = build_conditioner(cfg, teacher, for_eval=True)
    cond, null = conditioner({"captions": ["a handwritten digit seven", "a handwritten digit one"]})
    assert null is None and cond.pooled.shape == (2, 16) and cond.guidance.tolist() == [3.5, 3.5]
    assert_samples_as_the_checkpoint(exported, checkpoint, cond)


def test_flux_pipeline_from_a_prompt_equals_the_checkpoint_student_and_the_sample_launcher_writes_it(runs, tmp_path):
    from ard_scale.pipeline import ARDPipeline, export_pipeline
    from ard_scale.trainer.build import build_codec_for

    folder = export_pipeline(runs["full"], tmp_path / "pipe", use_ema=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert {"text_encoder", "pooled_text_encoder", "vae", "scheduler", "transformer"} <= index.keys()
    assert index["ard"]["guidance_scale"] == 3.5 and index["ard"]["guidance"] == "embedded"
    pipe = ARDPipeline.from_pretrained(folder)
    cfg, teacher, reference = checkpoint_student(RECIPE, runs["full"])
    cond, _ = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit two"]})
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = pipe("a handwritten digit two", latents=noise, output_type="pt")
    expected = reference.sample(noise, cond)
    torch.testing.assert_close(out.latents, expected, rtol=1e-5, atol=1e-6)
    decoded = (build_codec_for(cfg, teacher).decode(expected) + 1) / 2  # the trainer's VAE and shift factor
    torch.testing.assert_close(out.images, decoded.expand(-1, 3, -1, -1), rtol=1e-5, atol=1e-5)

    paths = launcher("sample")([str(folder), "--prompt", "a one", "--prompt", "a two", "--out", str(tmp_path / "s")])
    assert [p.name for p in paths] == ["sample_000.png", "sample_001.png"]
    from PIL import Image

    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.size == (2 * 128 + 3 * 4, 128 + 14 + 2 * 4)  # 32 px upscaled to 128, gaps, a caption line


def test_flux_trains_offline_from_a_dump_of_precomputed_text(tmp_path):
    """precompute_text.py (T5 tokens + pooled CLIP) -> dump_trajectories.py (the recipe's own teacher, the guidance
    embedded) -> 2 ranks train on the dump alone: the teacher never runs, and the stored pooled embedding and the
    recipe's guidance complete each condition (a dump without them was refused before)."""
    text, dump, run = tmp_path / "text", tmp_path / "dump", tmp_path / "run"
    recipe = str(ROOT / RECIPE)
    # the launchers' main() in this process (their command lines: tests/unit/test_launcher_errors.py): two fresh
    # interpreters spent ~10 s each importing torch and diffusers, for about a second of work
    assert launcher("precompute_text")(["bundled:digits/mds", str(text), "--recipe", recipe]) == 1797
    dumped = launcher("dump_trajectories")(
        [recipe, "--data", str(text), "--out", str(dump), "--num-samples", "8", "--device", "cpu"]
    )
    assert dumped == {"written": 8, "skipped": 0}
    assert "pooled_emb" in json.loads((dump / "meta.json").read_text())["columns"]
    proc = train(RECIPE, run, "train.trajectory_source=offline", f"data.trajectory_path={dump}", "data.path=null",
                 "train.max_steps=3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["teacher_batches"] for m in logged] == [0, 0, 0] and all(m["loss"] > 0 for m in logged)
