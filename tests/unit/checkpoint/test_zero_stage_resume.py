"""A resume under another zero.stage (a recipe change, so only under checkpoint.allow_recipe_change), on real
one-process DeepSpeed engines: stages 1 and 2 load each other's checkpoints; across 0, 1-2 and 3 DeepSpeed's reader
failed with a bare AssertionError, a missing optim_states file or a NoneType error, so the manager refuses first,
naming both stages and the fix, and leaves the checkpoint as it was."""

import json
from pathlib import Path

import pytest
from one_process import run_child

CHILD = """
import json, sys, warnings
from pathlib import Path
import torch
from ard_scale.checkpoint.manager import CheckpointManager
from ard_scale.checkpoint.safe_load import verify_dir
from ard_scale.config import load_config, to_dict
from ard_scale.distributed.engines import build_student_engine, init_distributed, student_ds_config

torch.set_num_threads(1)
init_distributed()


def manager(run_dir, stage):
    cfg = to_dict(load_config(sys.argv[3], [f"zero.stage={stage}"]))
    return CheckpointManager(run_dir, keep_last=2, config_dict=cfg, allow_recipe_change=True)


def engine(stage):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    return build_student_engine(model, student_ds_config(micro_batch=2, zero_stage=stage))[0]


out = {}
for saved, resumed in json.loads(sys.argv[2]):
    run_dir = Path(sys.argv[1]) / f"{saved}-{resumed}"
    first = engine(saved)
    first.backward(first(torch.randn(2, 8)).pow(2).mean())
    first.step()
    manager(run_dir, saved).save(first, 1, {"step": 1}, {"cursor": torch.tensor(3)})
    mgr = manager(run_dir, resumed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "resuming step_00000001 under a changed recipe (zero.stage: ...)"
        try:
            client, rank_state = mgr.load_latest(engine(resumed))
            result = {"loaded": client["step"]}
        except Exception as e:
            result = {"error": type(e).__name__, "message": str(e), "every_rank": getattr(e, "every_rank", None)}
    verify_dir(run_dir / "checkpoints" / "step_00000001")  # a refused checkpoint is left as it was
    out[f"{saved}-{resumed}"] = {**result, "latest": mgr.latest_tag()}
print("RESULT " + json.dumps(out), flush=True)
"""

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "tiny_cpu.yaml"
REFUSED = [(1, 3), (3, 2), (0, 2)]
LOADED = [(2, 1)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_child(CHILD, str(tmp_path_factory.mktemp("stages")), json.dumps(REFUSED + LOADED), str(RECIPE))


@pytest.mark.parametrize(("saved", "resumed"), REFUSED)
def test_a_resume_under_a_zero_stage_deepspeed_cannot_load_is_refused_naming_both(results, saved, resumed):
    result = results[f"{saved}-{resumed}"]
    assert result.get("error") == "UserError", result  # not DeepSpeed's AssertionError / FileNotFoundError
    message = result["message"]
    assert f"written under ZeRO stage {saved} and this run has zero.stage={resumed}" in message, message
    assert f"Resume with zero.stage={saved}" in message and "step_00000001" in message, message
    assert result["every_rank"] is True
    assert result["latest"] == "step_00000001"


@pytest.mark.parametrize(("saved", "resumed"), LOADED)
def test_stages_one_and_two_still_load_each_others_checkpoints(results, saved, resumed):
    assert results[f"{saved}-{resumed}"] == {"loaded": 1, "latest": "step_00000001"}
