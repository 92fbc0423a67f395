"""2-rank worker: build_run's text encoders are partitioned (frozen ZeRO-3 engines at zero.teacher_stage 3) and encode
captions exactly as the same encoders held whole. argv: OUT RECIPE [RECIPE ...] (one launch for several)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ard_scale.config import load_config  # noqa: E402
from ard_scale.distributed.engines import finish_process, init_distributed  # noqa: E402
from ard_scale.trainer.build import build_conditioner, build_run  # noqa: E402


def main(out: str, *recipes: str) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    results = {recipe: check(recipe, rank, world) for recipe in recipes}
    if rank == 0:
        Path(out).write_text(json.dumps(results))


def check(recipe: str, rank: int, world: int) -> dict:
    cfg = load_config(recipe, ["zero.teacher_stage=3", "eval.every=null"])
    run = build_run(cfg, rank, world)
    whole = build_conditioner(cfg, run.teacher, "cpu")
    captions = {"captions": [f"a handwritten digit {rank}", "a one, written small"]}  # other captions per rank
    got, got_null = run.conditioner(captions)
    want, want_null = whole(captions)
    encoders = {slot: encoder.model for slot, encoder in run.conditioner.encoders.items()}
    result = {
        "encoders": sorted(encoders),
        "partitioned": {
            a: all(
                hasattr(p, "ds_tensor") and p.ds_tensor.numel() <= (p.ds_numel + world - 1) // world
                for p in m.parameters()
            )
            for a, m in encoders.items()
        },
        "local_numel": {a: sum(p.ds_tensor.numel() for p in m.parameters()) for a, m in encoders.items()},
        "full_numel": {a: sum(p.ds_numel for p in m.parameters()) for a, m in encoders.items()},
        "equal": all(
            torch.equal(x, y)
            for x, y in [(got.text, want.text), (got_null.text, want_null.text)]
            + ([(got.pooled, want.pooled)] if want.pooled is not None else [])
            + ([(got.text_mask, want.text_mask)] if want.text_mask is not None else [])
        ),
    }
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
    finish_process()  # no SIGABRT in finalisation from a live gloo group (engines.finish_process)
