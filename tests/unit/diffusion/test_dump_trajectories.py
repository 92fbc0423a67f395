"""launchers/dump_trajectories.py: MDS chunks equal the online generator, a resumed dump skips finished chunks, and
caption-shard conditions (T5 embeddings) are stored with each trajectory."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from caption_shards import write_caption_shards, write_tiny_t5
from streaming.base.format import reader_from_json

from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.models.teachers import build_teacher, load_teacher

LAUNCHER = Path(__file__).resolve().parents[3] / "launchers" / "dump_trajectories.py"


def _launcher():
    spec = importlib.util.spec_from_file_location("dump_trajectories", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dump():
    return _launcher().main


def _read(folder: Path) -> list[dict]:
    index = json.loads((folder / "index.json").read_text())
    out = []
    for shard in index["shards"]:
        reader = reader_from_json(str(folder), None, shard)
        out += [reader.get_item(i) for i in range(reader.samples)]
    return out


def test_dump_matches_online_trajectories_and_resumes(tmp_path):
    teacher_dir = tmp_path / "teacher"
    build_teacher("dit", "debug", seed=3).model.save_pretrained(teacher_dir)
    out = tmp_path / "dump"
    argv = [
        "--teacher",
        str(teacher_dir),
        "--out",
        str(out),
        "--num-samples",
        "6",
        "--chunk-size",
        "4",
        "--batch-size",
        "3",
        "--steps",
        "2",
        "--substeps",
        "2",
        "--guidance",
        "1.5",
        "--seed",
        "100",
        "--device",
        "cpu",
    ]
    main = _dump()
    assert main(argv) == {"written": 6, "skipped": 0}
    rows = _read(out / "chunk_00000") + _read(out / "chunk_00001")
    assert [r["seed"] for r in rows] == list(range(100, 106))
    assert [r["label"] for r in rows] == [0, 1, 2, 3, 4, 5]

    teacher = load_teacher(teacher_dir)
    ref = teacher_trajectory(
        teacher,
        VPSchedule(),
        Condition(labels=torch.arange(4, 6)),
        latent_shape=(4, 8, 8),
        seeds=[104, 105],
        null_cond=teacher.null_condition(2),
        guidance_scale=1.5,
        num_student_steps=2,
        substeps=2,
    )
    dumped = torch.stack([torch.tensor(r["states"]) for r in rows[4:]])
    assert dumped.shape == (2, 3, 4, 8, 8)
    assert (dumped - ref.states).norm() <= 1e-5 * ref.states.norm()

    # resume: a finished chunk is kept as is, an unfinished one (no index.json) is rewritten identically
    (out / "chunk_00001" / "index.json").unlink()
    mtime = (out / "chunk_00000" / "index.json").stat().st_mtime_ns
    assert main(argv) == {"written": 2, "skipped": 4}
    assert (out / "chunk_00000" / "index.json").stat().st_mtime_ns == mtime
    again = _read(out / "chunk_00001")
    assert all((a["states"] == b["states"]).all() for a, b in zip(again, rows[4:], strict=True))

    # extended with a larger --num-samples: the short last chunk (samples 4, 5) is completed, not kept with a hole
    argv[argv.index("--num-samples") + 1] = "10"
    assert main(argv) == {"written": 6, "skipped": 4}
    seeds = [r["seed"] for c in ("chunk_00000", "chunk_00001", "chunk_00002") for r in _read(out / c)]
    assert seeds == list(range(100, 110))

    # a smaller --num-samples would leave chunks the trainer reads: refused, nothing removed
    argv[argv.index("--num-samples") + 1] = "4"
    with pytest.raises(ValueError, match="already holds 10 samples.*--num-samples 10 or more"):
        main(argv)
    assert json.loads((out / "meta.json").read_text())["num_samples"] == 10
    assert (out / "chunk_00002" / "index.json").is_file()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One thread: steadier on a loaded machine; the process-wide count is restored for the next test."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


def test_dump_from_caption_shards_round_trips_the_conditions(tmp_path, mds_env):
    shard_rows = write_caption_shards(
        str(tmp_path / "shards"), write_tiny_t5(str(tmp_path / "t5")), num_samples=5, max_length=6
    )
    teacher_dir = tmp_path / "teacher"
    kwargs = dict(caption_channels=16, in_channels=1, out_channels=2, sample_size=8, num_layers=1)
    build_teacher("pixart", "debug", seed=3, **kwargs).model.save_pretrained(teacher_dir)
    out = tmp_path / "dump"
    argv = ["--teacher", str(teacher_dir), "--data", str(tmp_path / "shards"), "--out", str(out), "--num-samples", "7",
            "--chunk-size", "4", "--batch-size", "3", "--steps", "2", "--substeps", "2", "--guidance", "1.5",
            "--seed", "100", "--device", "cpu"]  # fmt: skip
    main = _dump()
    with pytest.raises(ValueError, match="null caption"):
        main(argv)
    null = {"t5_emb": torch.randn(6, 16), "t5_mask": torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.uint8)}
    torch.save(null, teacher_dir / "null_caption.pt")
    assert main(argv) == {"written": 7, "skipped": 0}
    rows = _read(out / "chunk_00000") + _read(out / "chunk_00001")
    assert [r["caption_index"] for r in rows] == [0, 1, 2, 3, 4, 0, 1] and {r["label"] for r in rows} == {-1}
    for row, i in zip(rows, [0, 1, 2, 3, 4, 0, 1], strict=True):  # sample i carries shard sample i mod 5, exactly
        assert row["key"] == shard_rows[i]["key"]
        assert (row["t5_emb"] == shard_rows[i]["t5_emb"].astype("float32")).all()
        assert (row["t5_mask"] == shard_rows[i]["t5_mask"]).all()

    teacher = load_teacher(teacher_dir)
    ref = teacher_trajectory(
        teacher,
        VPSchedule(),
        Condition(text=torch.tensor(rows[5]["t5_emb"])[None], text_mask=torch.tensor(rows[5]["t5_mask"]).long()[None]),
        latent_shape=(1, 8, 8),
        seeds=[105],
        null_cond=Condition(text=null["t5_emb"][None], text_mask=null["t5_mask"].long()[None]),
        guidance_scale=1.5,
        num_student_steps=2,
        substeps=2,
    )
    assert (torch.tensor(rows[5]["states"]) - ref.states[0]).norm() <= 1e-5 * ref.states.norm()

    (out / "chunk_00001" / "index.json").unlink()  # resume: the rewritten chunk has the same conditions and states
    assert main(argv) == {"written": 3, "skipped": 4}
    again = _read(out / "chunk_00001")
    for a, b in zip(again, rows[4:], strict=True):
        assert a["key"] == b["key"] and (a["t5_emb"] == b["t5_emb"]).all() and (a["states"] == b["states"]).all()


@pytest.mark.filterwarnings("ignore:skipped sample")
def test_a_caption_index_is_the_samples_place_in_storage_order_past_a_corrupt_sample(tmp_path, mds_env):
    """A corrupt sample of the caption shards is skipped, and the captions after it keep their storage places as
    caption_index (the docs' promise): counting only valid samples numbered them one short."""
    from itertools import islice

    import numpy as np

    from ard_scale.data.bundled import bundled_digits_path
    from ard_scale.data.sources import iter_shard_set
    from ard_scale.data.writers import MDSWriterAdapter

    writer = MDSWriterAdapter(str(tmp_path / "text"), shard_bytes=1 << 20, with_label=True, with_t5=True)
    for i, sample in enumerate(islice(iter_shard_set(bundled_digits_path("webdataset"), "webdataset"), 5)):
        emb = np.full((3, 4), i, dtype=np.float16)
        writer.write({**sample, "image": b"garbage" if i == 1 else sample["image"], "t5_emb": emb,
                      "t5_mask": np.ones(3, dtype=np.uint8)})  # fmt: skip
    writer.finish()
    stream = _launcher().caption_conditions(str(tmp_path / "text"), 2)
    rows = [next(stream) for _ in range(6)]
    assert [index for index, *_ in rows] == [0, 2, 3, 4, 0, 2]  # storage order, cycling; sample 1 is corrupt
    assert [int(emb[0, 0]) for _, _, emb, *_ in rows] == [0, 2, 3, 4, 0, 2]  # each index is its own sample's text


@pytest.mark.parametrize("recipe", ["tiny_flux_cpu", "tiny_sd3_cpu", "tiny_qwen_image_cpu"])
def test_a_dump_from_precomputed_text_is_the_trainers_trajectory(tmp_path, recipe, mds_env):
    """FLUX.1 (embedded guidance, pooled CLIP), SD3 (true CFG, pooled CLIP-L ‖ CLIP-G) and Qwen-Image (true CFG with
    its norm rescaling, masked text): a recipe's dump from launchers/precompute_text.py's shards (the null caption
    from them too, the teacher the recipe's own debug size) is the trajectory of the trainer's own conditions, the
    Conditioner's from the captions, for the same noise."""
    from itertools import islice

    from ard_scale.config import load_config
    from ard_scale.data.sources import iter_shard_set
    from ard_scale.data.writers import MDSWriterAdapter
    from ard_scale.diffusion.trajectory import uniform_teacher_grid
    from ard_scale.trainer.build import build_conditioner, build_schedule, build_teacher_model, latent_shape

    recipe = LAUNCHER.parents[1] / "recipes" / f"{recipe}.yaml"
    samples = list(islice(iter_shard_set("bundled:digits/mds", "mds"), 3))
    writer = MDSWriterAdapter(str(tmp_path / "images"), shard_bytes=1 << 20, with_label=True)
    for sample in samples:
        writer.write(sample)
    writer.finish()
    spec = importlib.util.spec_from_file_location("precompute_text", LAUNCHER.with_name("precompute_text.py"))
    precompute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precompute)
    precompute.main([str(tmp_path / "images"), str(tmp_path / "text"), "--recipe", str(recipe)])
    out = tmp_path / "dump"
    argv = [str(recipe), "--data", str(tmp_path / "text"), "--out", str(out), "--num-samples", "3", "--device", "cpu"]
    assert _dump()(argv) == {"written": 3, "skipped": 0}
    rows = _read(out / "chunk_00000")

    cfg = load_config(recipe)
    teacher = build_teacher_model(cfg)
    conditioner = build_conditioner(cfg, teacher, for_eval=True)
    cond, null = conditioner({"captions": [s["caption"] for s in samples]})
    schedule, S, d = build_schedule(cfg, teacher.patch_size), cfg.student.num_steps, cfg.diffusion
    ref = teacher_trajectory(
        teacher, schedule, cond, null_cond=null, guidance_scale=conditioner.cfg_scale, solver=d.solver,
        record=d.record, guide=teacher.spec.guide, student_grid=schedule.grid(S),
        teacher_grid=uniform_teacher_grid(schedule, S, d.substeps), latent_shape=latent_shape(cfg, teacher),
        seeds=[0, 1, 2],
    )  # fmt: skip
    states = torch.stack([torch.tensor(r["states"]) for r in rows])
    assert [r["key"] for r in rows] == [s["key"] for s in samples]
    error = ((states - ref.states).norm() / ref.states.norm()).item()
    assert error <= 1e-4, error  # the text went through float16 in the shards (~1e-5 here)
