"""launchers/dump_trajectories.py: MDS chunks equal the online generator, and a resumed dump skips finished chunks."""

import importlib.util
import json
from pathlib import Path

import torch
from streaming.base.format import reader_from_json

from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.models.condition import Condition
from ard_scale.models.teachers import build_teacher, load_teacher

LAUNCHER = Path(__file__).resolve().parents[3] / "launchers" / "dump_trajectories.py"


def _dump():
    spec = importlib.util.spec_from_file_location("dump_trajectories", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


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
