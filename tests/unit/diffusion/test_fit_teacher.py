"""launchers/fit_teacher.py: a few training steps of each family/objective write a loadable diffusers folder, from the
in-memory digits or from shard sets (class labels, precomputed T5 embeddings, or captions encoded with a local T5)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from caption_shards import write_caption_shards, write_tiny_t5

from ard_scale.config import load_config
from ard_scale.data import DataConfig, build_loader, bundled_digits_path
from ard_scale.data.bundled import load_digits
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule
from ard_scale.models.families import FAMILIES
from ard_scale.models.teachers import build_teacher, load_teacher

LAUNCHER = Path(__file__).resolve().parents[3] / "launchers" / "fit_teacher.py"
RECIPES = LAUNCHER.parents[1] / "recipes"


def _fit_teacher():
    spec = importlib.util.spec_from_file_location("fit_teacher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family, objective", [("dit", "epsilon"), ("pixart", "flow")])
def test_fit_teacher_writes_a_loadable_folder(tmp_path, family, objective):
    fit = _fit_teacher()
    out = tmp_path / "teacher"
    argv = [
        "--out",
        str(out),
        "--family",
        family,
        "--objective",
        objective,
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--width",
        "32",
        "--layers",
        "1",
        "--sample-steps",
        "2",
    ]
    result = fit.main(argv)
    assert result["family"] == family and result["objective"] == objective
    teacher = load_teacher(out)
    assert teacher.family == family and teacher.in_channels == 1 and teacher.sample_size == 8
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    accuracy = json.loads((out / "fit.json").read_text())["sample_accuracy"]
    assert (out / "samples.png").is_file() and isinstance(accuracy, float)  # its meaning: the test below
    conditioner = fit.ClassConditioner(teacher)
    if family == "pixart":
        conditioner.captions = torch.load(out / "captions.pt")
        assert set(conditioner.captions) == {"text"}
    cond = conditioner(torch.tensor([3, 10]))
    assert isinstance(cond, Condition)
    assert teacher(torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0]), cond).shape == (2, 2, 8, 8)


def test_recipe_supplies_defaults():
    """The recipe is loaded (and checked) by the config system, with its overrides, not read as raw YAML."""
    fit = _fit_teacher()
    recipe = RECIPES / "tiny_t2i_cpu.yaml"
    expected = {"family": "pixart", "size": "debug", "objective": "epsilon", "resolution": 32}
    expected.update(data="bundled:digits/webdataset", data_format="webdataset")
    assert fit.recipe_defaults(load_config(recipe)) == expected
    flow = load_config(recipe, ["diffusion.schedule=flow", "diffusion.prediction_type=flow", "data.resolution=16"])
    defaults = fit.recipe_defaults(flow)
    assert (defaults["objective"], defaults["resolution"]) == ("flow", 16)


@pytest.mark.parametrize("fmt", ["webdataset", "mds"])
def test_in_memory_digits_are_the_images_a_run_reads(fmt, mds_env):
    """The teacher's digits, the GAN stage's reals and the demo's reference set are one distribution: what the
    training loader decodes from the bundled shards (not sklearn's 8x8 arrays, which differ from them after the
    8 -> 32 -> 8 resampling)."""
    images, labels = load_digits(8, fmt)
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    config = DataConfig(format=fmt, path=bundled_digits_path(fmt), batch_size=64, resolution=8, num_workers=0, seed=3)
    batch = next(iter(build_loader(config, rank=0, world_size=1)))  # shuffled
    index = torch.tensor([int(k.rsplit("-", 1)[1]) for k in batch["keys"]])
    assert torch.equal(images[index], batch["images"][:, :1]) and torch.equal(labels[index], batch["labels"].long())


# a 1-layer width-32 teacher trained fast enough (no EMA) that a few dozen steps visibly lower the loss
SMALL = [
    "--threads",
    "1",
    "--width",
    "32",
    "--layers",
    "1",
    "--batch-size",
    "16",
    "--lr",
    "3e-3",
    "--ema",
    "0",
    "--sample-steps",
    "2",
]
SMALL_KWARGS = dict(
    in_channels=1, out_channels=2, sample_size=8, num_layers=1, num_attention_heads=1, attention_head_dim=32
)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`--threads 1` (steadier on a loaded machine) sets the process-wide count; give the next test its own."""
    num_threads = torch.get_num_threads()
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return write_tiny_t5(str(tmp_path_factory.mktemp("t5") / "t5"))


def _loss(fit, teacher, schedule, x0, cond) -> float:
    """The objective on a fixed batch with fixed noise and times."""
    with torch.no_grad():
        return float(fit.diffusion_loss(teacher, schedule, x0, cond, torch.Generator().manual_seed(1)))


def test_fit_dit_on_digit_shards(tmp_path):
    fit = _fit_teacher()
    out = tmp_path / "teacher"
    data = ["--data", bundled_digits_path("webdataset"), "--data-format", "webdataset"]
    result = fit.main([*data, "--family", "dit", "--steps", "30", *SMALL, "--out", str(out)])
    teacher = load_teacher(out)
    assert (teacher.family, teacher.in_channels, teacher.sample_size, teacher.num_classes) == ("dit", 1, 8, 10)
    saved = json.loads((out / "fit.json").read_text())
    assert result["sample_accuracy"] is None and "digits only" in saved["sample_accuracy_note"]
    assert saved["data"] == {"path": bundled_digits_path("webdataset"), "format": "webdataset"}
    assert (out / "samples.png").is_file()
    x0, labels = fit.load_digits(8)  # the same digits the shards hold (decoded from PNG there)
    cond = Condition(labels=labels[:256])
    init = build_teacher("dit", "debug", seed=0, num_embeds_ada_norm=10, **SMALL_KWARGS)
    assert _loss(fit, teacher, VPSchedule(), x0[:256], cond) < 0.85 * _loss(fit, init, VPSchedule(), x0[:256], cond)


def test_fit_pixart_on_caption_shards_with_t5_embeddings(tmp_path, tiny_t5, mds_env):
    fit = _fit_teacher()
    rows = write_caption_shards(str(tmp_path / "shards"), tiny_t5, num_samples=32, max_length=12)
    out = tmp_path / "teacher"
    data = ["--data", str(tmp_path / "shards"), "--data-format", "mds"]
    fit.main([*data, "--family", "pixart", "--objective", "flow", "--steps", "30", *SMALL, "--out", str(out)])
    teacher = load_teacher(out)
    assert teacher.family == "pixart" and teacher.config["caption_channels"] == 16
    null = torch.load(out / "null_caption.pt")  # no encoder: a zero embedding with one valid token
    assert null["t5_emb"].shape == (12, 16) and not null["t5_emb"].any() and null["t5_mask"].tolist() == [1] + [0] * 11
    x0 = fit.load_digits(8)[0][:32]  # the shards' images, in the same order
    cond = Condition(
        text=torch.stack([torch.tensor(r["t5_emb"]).float() for r in rows]),
        text_mask=torch.stack([torch.tensor(r["t5_mask"]).long() for r in rows]),
    )
    init = build_teacher("pixart", "debug", seed=0, caption_channels=16, **SMALL_KWARGS)
    assert _loss(fit, teacher, FlowSchedule(), x0, cond) < 0.85 * _loss(fit, init, FlowSchedule(), x0, cond)


def test_fit_pixart_encodes_shard_captions_with_a_local_t5(tmp_path, tiny_t5):
    from ard_scale.models.text_encoder import encode_captions, load_t5

    fit = _fit_teacher()
    out = tmp_path / "teacher"
    data = ["--data", bundled_digits_path("webdataset"), "--data-format", "webdataset"]
    fit.main([*data, "--family", "pixart", "--text-encoder", tiny_t5, "--max-length", "10", "--steps", "2", *SMALL,
              "--out", str(out)])  # fmt: skip
    assert load_teacher(out).config["caption_channels"] == 16
    emb, mask = encode_captions(*load_t5(tiny_t5), [""], max_length=10)
    null = torch.load(out / "null_caption.pt")
    assert torch.equal(null["t5_mask"], mask[0]) and torch.allclose(null["t5_emb"], emb[0])


def test_fit_on_shards_without_the_family_condition_is_an_error(tmp_path, tiny_t5, mds_env):
    fit = _fit_teacher()
    write_caption_shards(str(tmp_path / "shards"), tiny_t5, num_samples=4, with_label=False)
    mds = ["--data", str(tmp_path / "shards"), "--data-format", "mds", "--steps", "1", "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="needs class labels, but samples .* have no class label"):
        fit.main([*mds, "--family", "dit"])
    wds = ["--data", bundled_digits_path("webdataset"), "--data-format", "webdataset", "--steps", "1"]
    with pytest.raises(ValueError, match="no T5 embeddings"):
        fit.main([*wds, "--family", "pixart", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_teacher_defaults_work_for_every_family(tmp_path, family, capsys):
    """Only --out, --family and a short run: the default width (64) meets the family's other widths (PixArt's
    cross-attention followed it; it crashed inside diffusers at 32; FLUX's RoPE axes and SD3's caption projection
    follow it too), the pixel-space shapes are the family's own (FLUX packs 2×2, no learned sigma for the MMDiTs),
    the saved teacher runs on its saved condition, and the thread choice is said."""
    fit = _fit_teacher()
    argv = ["--out", str(tmp_path / "t"), "--family", family, "--steps", "2", "--sample-steps", "2"]
    result = fit.main(argv)
    assert result["family"] == family
    teacher = load_teacher(tmp_path / "t")
    c = teacher.config
    assert c.num_attention_heads * c.attention_head_dim == 64
    assert (teacher.family, teacher.in_channels) == (family, 1)
    if family == "pixart":
        assert c.cross_attention_dim == 64
    if family == "flux":
        assert sum(c.axes_dims_rope) == c.attention_head_dim and c.in_channels == 4
    if family == "sd3":
        assert c.caption_projection_dim == 64
    conditioner = fit.ClassConditioner(teacher, guidance=1.5)
    if teacher.spec.condition_kind == "text":
        conditioner.captions = torch.load(tmp_path / "t" / "captions.pt")
    out = teacher(torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0]), conditioner(torch.tensor([3, 10])))
    assert teacher.split_output(out).shape == (2, 1, 8, 8)
    assert "1 CPU thread(s)" in capsys.readouterr().out


def test_the_sample_grid_guides_as_the_familys_pipeline():
    """samples.png (and fit.json's sample accuracy) come from the teacher's own sampler: Qwen-Image's CFG rescales the
    guided prediction to the conditional one's norm (`Family.guide`), which the grid's sampler left out."""
    from ard_scale.diffusion.trajectory import teacher_trajectory

    fit = _fit_teacher()
    overrides = FAMILIES["qwen_image"].pixel_overrides(1, 8)  # a 1-channel pixel-space teacher, as fit_teacher fits
    teacher = build_teacher("qwen_image", "debug", seed=1, **overrides)
    conditioner = fit.ClassConditioner(teacher)
    cond, null = conditioner(torch.tensor([3, 7])), conditioner(torch.tensor([10, 10]))
    schedule, shape = FlowSchedule(), (1, 8, 8)
    samples = fit.sample(teacher, schedule, cond, null, shape, 4.0, 2)
    kw = dict(null_cond=null, guidance_scale=4.0, latent_shape=shape, seeds=range(2), num_student_steps=1, substeps=2)
    guided = teacher_trajectory(teacher, schedule, cond, guide=teacher.spec.guide, **kw).final.clamp(-1, 1)
    torch.testing.assert_close(samples, guided, rtol=0, atol=1e-6)
    assert not torch.allclose(samples, teacher_trajectory(teacher, schedule, cond, **kw).final.clamp(-1, 1))


def test_fit_teacher_on_shards_refuses_a_family_that_needs_pooled_clip(tmp_path):
    data = ["--data", bundled_digits_path("webdataset"), "--data-format", "webdataset"]
    with pytest.raises(SystemExit):
        _fit_teacher().main([*data, "--family", "flux", "--steps", "1", "--out", str(tmp_path / "o")])


def test_sample_accuracy_is_the_5nn_class_agreement_with_the_real_digits():
    """The fit's quality number: real digits as 'samples' are put in their own class, wrong labels are not."""
    fit = _fit_teacher()
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(fit.NUM_CLASSES, 1, 8, 8, generator=g)  # ten well-separated classes
    real_labels = torch.arange(fit.NUM_CLASSES).repeat_interleave(6)
    real = prototypes[real_labels] + 0.05 * torch.randn(len(real_labels), 1, 8, 8, generator=g)
    samples = prototypes + 0.05 * torch.randn(fit.NUM_CLASSES, 1, 8, 8, generator=g)
    labels = torch.arange(fit.NUM_CLASSES)
    assert fit.sample_accuracy(samples, labels, real, real_labels) == 1.0
    assert fit.sample_accuracy(samples, (labels + 1) % fit.NUM_CLASSES, real, real_labels) == 0.0
    half = torch.where(labels < 5, labels, (labels + 1) % fit.NUM_CLASSES)
    assert fit.sample_accuracy(samples, half, real, real_labels) == 0.5


def test_fit_teacher_refuses_an_out_that_holds_a_teacher_unless_overwrite(tmp_path):
    """A second fit into the same --out silently replaced the teacher, and a run distilled from it then resumed against
    other weights: it is refused before the fit, leaving the teacher as it was; --overwrite replaces it whole."""
    fit, out = _fit_teacher(), tmp_path / "teacher"
    argv = ["--out", str(out), "--steps", "1", "--sample-steps", "1"]
    fit.main(argv)
    weights = (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(ValueError) as refused:
        fit.main([*argv, "--seed", "1"])
    assert str(refused.value) == (
        f"{out} exists and is not empty; choose a new folder for the fitted teacher (or remove it); --overwrite "
        "replaces it, but a run distilled from the teacher there then resumes against other weights"
    )
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    fit.main([*argv, "--seed", "1", "--overwrite"])
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() != weights
    assert load_teacher(out).family == "dit" and sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
