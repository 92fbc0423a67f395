"""1-rank worker: the teacher's dtype in build_run under train.precision=bf16 at zero.teacher_stage 0 (replicated)
and 3 (a frozen engine), and whether one batch's trajectory solves at stage 0. argv: OUT."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ard_scale.config import load_config  # noqa: E402
from ard_scale.distributed.engines import finish_process, init_distributed  # noqa: E402
from ard_scale.trainer.build import build_run  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    result = {}
    for stage in (0, 3):
        overrides = ["train.precision=bf16", f"zero.teacher_stage={stage}", f"checkpoint.run_dir={Path(out).parent}"]
        run = build_run(load_config("recipes/tiny_cpu.yaml", overrides), rank, world)
        result[f"stage{stage}"] = str(run.teacher.dtype)
        if stage == 0:
            states, _ = run.trajectories(next(iter(run.loader)), step=0)
            result["finite"] = bool(torch.isfinite(states).all())
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
    finish_process(0)
