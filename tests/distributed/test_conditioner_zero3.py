"""The trainer's frozen text encoders under ZeRO-3 (real DeepSpeed, 2 ranks on gloo): each rank holds about half of
every encoder's weights, and the captions encode exactly as with the encoders held whole."""

import json
from pathlib import Path

import pytest

from ard_scale.utils.launch import torchrun

SCRIPT = Path(__file__).with_name("conditioner_zero3.py")


RECIPES = {  # recipe -> the encoders it loads
    "recipes/tiny_sd3_cpu.yaml": ["t5", "clip", "clip_2"],  # T5 + CLIP-L + CLIP-G
    "recipes/tiny_qwen_image_cpu.yaml": ["qwen"],  # Qwen2.5-VL
}


@pytest.mark.slow
@pytest.mark.distributed
def test_text_encoders_are_partitioned_and_encode_as_whole_ones(tmp_path):
    out = tmp_path / "out.json"
    proc = torchrun(2, SCRIPT, out, *RECIPES)  # one launch for both recipes
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    for recipe, encoders in RECIPES.items():
        r = results[recipe]
        assert r["encoders"] == sorted(encoders), recipe
        assert all(r["partitioned"].values()), (recipe, r["partitioned"])
        for name in encoders:  # half of each parameter (ZeRO-3 pads a partition by less than one element per rank)
            assert r["local_numel"][name] < 0.51 * r["full_numel"][name], (recipe, name)
        assert r["equal"], recipe
