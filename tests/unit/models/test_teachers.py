"""Teacher adapters: named sizes, meta-device builds, loading real diffusers folders, and clear refusals."""

import json

import pytest
import torch
from diffusers import UNet2DModel
from model_helpers import make_condition

from ard_scale.models.teachers import SIZES, build_teacher, load_teacher


@pytest.fixture(params=("dit", "pixart"))
def family(request):
    """The single-stream DiT families (4-channel latents, learned sigma); FLUX's teacher tests: test_flux.py."""
    return request.param


@pytest.mark.parametrize(
    "family, size, params_m",
    [("dit", "dit_xl_2_256", 749.8), ("pixart", "pixart_sigma_1024", 610.9)],
)
def test_real_sizes_build_on_meta_without_weights(family, size, params_m):
    teacher = build_teacher(family, size, device="meta")
    params = list(teacher.parameters())
    assert all(p.device.type == "meta" for p in params)
    # diffusers' DiT keeps a timestep+class embedder per block, hence more than the original 675M.
    assert sum(p.numel() for p in params) / 1e6 == pytest.approx(params_m, abs=0.1)
    assert teacher.depth == 28 and teacher.learned_sigma


def test_debug_size_forward_and_shape_facts(teacher, family):
    x = torch.randn(2, 4, 8, 8)
    out = teacher(x, torch.tensor([10.0, 900.0]), make_condition(family, 2))
    assert out.shape == (2, 8, 8, 8) and teacher.split_output(out).shape == x.shape
    assert teacher.family == family and teacher.depth == SIZES[family]["debug"]["num_layers"]
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("layout", ["model", "pipeline"])
def test_load_from_a_local_diffusers_folder(tmp_path, teacher, family, layout):
    folder = tmp_path / "ckpt"
    teacher.model.save_pretrained(folder / "transformer" if layout == "pipeline" else folder)
    loaded = load_teacher(folder)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), make_condition(family, 2)
    assert loaded.family == family
    assert torch.equal(loaded(x, t, cond), teacher(x, t, cond))


def test_unsupported_folder_names_the_class_and_the_supported_ones(tmp_path):
    UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match=r"UNet2DModel.*not a supported teacher.*DiTTransformer2DModel.*PixArt"):
        load_teacher(tmp_path / "unet")


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_teacher(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_teacher(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="<no _class_name>"):
        load_teacher(tmp_path / "odd")


def test_bad_names_and_inputs(teacher, family):
    with pytest.raises(ValueError, match="unknown teacher family 'mmdit'"):
        build_teacher("mmdit", "debug")
    with pytest.raises(ValueError, match="choose one of debug"):
        build_teacher(family, "huge")
    with pytest.raises(ValueError, match="patch size 2"):
        teacher.check_input(torch.randn(1, 4, 7, 8))
    other = make_condition("pixart" if family == "dit" else "dit", 2)
    with pytest.raises(ValueError, match="needs"):
        teacher(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), other)
