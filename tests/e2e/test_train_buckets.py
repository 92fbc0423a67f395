"""data.buckets through launchers/build_shards.py and launchers/train.py on 2 ranks (ZeRO-3, gloo), tiny_t2i_cpu
(PixArt): wide and tall captioned images become two aspect-ratio buckets, so the teacher trajectories are solved
at each batch's non-square size; the GAN stage then takes each batch's reals at its fakes' size (before, every
trajectory was data.resolution's square, and the GAN stage stopped at the first non-square batch); the export
records the buckets, and its pipeline samples one without a warning."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ard_scale.checkpoint.export import export_student, load_exported_student
from ard_scale.data.transforms import bucket_latent_sizes
from ard_scale.pipeline import ARDPipeline, export_pipeline
from ard_scale.utils.launch import ROOT, launch_env, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
BUCKETS = ("data.buckets=true", "data.batch_size=2", "checkpoint.every=2")


def image_folder(folder: Path) -> Path:
    """12 captioned images, alternately 96×32 (wide) and 32×96 (tall)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        size = (96, 32) if i % 2 else (32, 96)
        pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize(size, Image.BILINEAR).save(folder / f"img-{i:02d}.png")
        (folder / f"img-{i:02d}.txt").write_text(f"a {'wide' if i % 2 else 'tall'} picture number {i}")
    return folder


def train(run_dir: Path, shards: Path, *overrides: str) -> list[dict]:
    args = ("launchers/train.py", "recipes/tiny_t2i_cpu.yaml", f"checkpoint.run_dir={run_dir}")
    proc = torchrun(2, *args, f"data.path={shards}", *BUCKETS, *overrides, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_buckets_distil_at_each_batchs_own_size_through_the_gan_stage_and_export(tmp_path):
    build = [sys.executable, "launchers/build_shards.py", str(image_folder(tmp_path / "images")), str(tmp_path)]
    subprocess.run([*build, "--formats", "webdataset"], cwd=ROOT, env=launch_env(), check=True, capture_output=True)
    shards = tmp_path / "webdataset"
    regression = train(tmp_path / "run", shards, "train.max_steps=2")
    assert [m["step"] for m in regression] == [1, 2] and all(np.isfinite(m["loss"]) for m in regression)
    gan = train(tmp_path / "gan", shards, "train.max_steps=2", "gan.enabled=true", "gan.warmup_steps=1",
                f"gan.init_from={tmp_path / 'run'}")  # fmt: skip
    assert gan[-1]["gan_weight"] > 0 and np.isfinite(gan[-1]["loss_d"])  # the adversarial step ran on the reals

    student = load_exported_student(export_student(tmp_path / "gan", tmp_path / "export", use_ema=False))
    down = 4  # the debug VAE
    assert student.latent_sizes == bucket_latent_sizes(32, down) and (14, 4) in student.latent_sizes
    meta = json.loads((tmp_path / "export" / "ard_config.json").read_text())["sampling"]
    assert [tuple(s) for s in meta["latent_sizes"]] == student.latent_sizes
    pipe = ARDPipeline.from_pretrained(export_pipeline(tmp_path / "gan", tmp_path / "pipeline", use_ema=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pipe("a wide picture", height=4 * down, width=14 * down, output_type="latent")
    assert out.latents.shape[-2:] == (4, 14)
