"""The recipe's evaluation built from config (trainer/evaluate.py) on plain modules, one process: the text-to-image
path (prompts -> T5 -> student -> VAE decode -> CLIP with those prompts), FID reference statistics computed once from
the recipe's shards and cached, the teacher's metrics computed once per recipe and keyed on what defines them, and
the clear errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from eval_assets import write_random_inception, write_tiny_clip_folder, write_tiny_t5

from ard_scale.config import load_config
from ard_scale.config.models import DiffusionConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.evaluation.eval_set import cache_key
from ard_scale.models.student import ARDStudent
from ard_scale.models.vae import build_codec
from ard_scale.trainer.build import build_conditioner, build_schedule, build_teacher_model
from ard_scale.trainer.evaluate import TeacherSampler, build_eval_setup, reference_description


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_assets")
    prompts = d / "prompts.txt"
    prompts.write_text("a handwritten digit one\na handwritten digit two\na handwritten digit three\n")
    return {
        "t5": write_tiny_t5(d / "t5"),
        "clip": write_tiny_clip_folder(d / "clip"),
        "inception": write_random_inception(d / "pt_inception.pth"),
        "prompts": prompts,
    }


def setup_for(run_dir, *overrides, recipe="recipes/tiny_cpu.yaml"):
    cfg = load_config(recipe, ["eval.num_samples=3", "eval.batch_size=2", "eval.grid_size=2", *overrides])
    teacher = build_teacher_model(cfg)
    schedule = build_schedule(cfg)
    codec = build_codec(size=cfg.vae.size, path=None, scaling_factor=None, channels=teacher.in_channels)
    calls = []

    def counting_teacher(*args, **kwargs):  # the real teacher, its calls counted
        calls.append(1)
        return teacher(*args, **kwargs)

    conditioner = build_conditioner(cfg, teacher)
    setup = build_eval_setup(
        cfg,
        teacher=teacher,
        teacher_denoise=counting_teacher,
        schedule=schedule,
        conditioner=conditioner,
        codec=codec,
        run_dir=run_dir,
    )
    return setup, ARDStudent(teacher, cfg.student, schedule).eval(), calls


def pixart(assets, *more):
    return (
        "teacher.family=pixart",
        "teacher.num_classes=null",
        f"text_encoder.path={assets['t5']}",
        "text_encoder.max_length=16",
        *more,
    )


def test_text_to_image_student_is_decoded_and_clip_scored_against_its_prompts(tmp_path, assets):
    setup, student, _ = setup_for(
        tmp_path, *pixart(assets, f"eval.prompts_path={assets['prompts']}", f"eval.clip_path={assets['clip']}")
    )
    assert [s.split(" ")[0] for s in setup.skipped] == ["FID"]  # no Inception file: said, not silently dropped
    cond, captions = setup.condition_for(torch.arange(4))
    assert captions == ["a handwritten digit one", "a handwritten digit two", "a handwritten digit three"] + [
        "a handwritten digit one"
    ]
    assert cond.text.shape[:2] == (4, 16)

    images, captions = setup.generate_fn(student.sample)(torch.arange(2))
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1  # debug VAE: 8x8x4 -> 32 px
    values = setup.run(student.sample)
    assert set(values) == {"num_samples", "clip_score"} and values["num_samples"] == 3
    # the score is the mean CLIP score of the evaluation set's own images against its own prompts
    from ard_scale.evaluation.clip_score import CLIPScore

    all_images, all_captions = setup.generate_fn(student.sample)(torch.arange(3))
    direct = CLIPScore.from_pretrained(None, assets["clip"]).score(all_images, all_captions).mean().item()
    assert values["clip_score"] == pytest.approx(direct, rel=1e-5)
    other = CLIPScore.from_pretrained(None, assets["clip"]).score(all_images, all_captions[::-1]).mean().item()
    assert abs(other - direct) > 1e-3  # the captions matter: a score against the wrong prompts differs
    clip = setup.evaluator.clip  # the same images scored against other prompts give another number
    clip.reset()
    clip.update(images, ["a handwritten digit three", "a handwritten digit one"])
    shuffled = clip.compute()
    clip.reset()
    clip.update(images, captions)
    assert clip.compute() != shuffled


def test_prompts_default_to_the_data_captions(tmp_path, assets):
    setup, _, _ = setup_for(tmp_path, *pixart(assets))
    _, captions = setup.condition_for(torch.arange(3))
    assert captions == ["a handwritten digit zero", "a handwritten digit one", "a handwritten digit two"]


@pytest.mark.slow  # the real Inception at 299 px: seconds per image on a loaded CPU (a 2048-d distance: minutes)
def test_fid_reference_from_shards_computed_once_and_cached(tmp_path, assets):
    more = (f"eval.fid_inception_path={assets['inception']}", "eval.fid_reference_num_images=2", "eval.num_samples=2")
    setup, _, _ = setup_for(tmp_path, *more)
    written = list((tmp_path / "eval" / "cache").glob("fid_reference_*.npz"))
    cfg = load_config("recipes/tiny_cpu.yaml", list(more))
    key = cache_key(reference_description(cfg))
    assert len(written) == 1 and written[0].name == f"fid_reference_{key}.npz"
    with np.load(written[0]) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
    stamp = written[0].stat().st_mtime_ns
    again, _, _ = setup_for(tmp_path, *more)  # a new run of the recipe: read, not recomputed
    assert written[0].stat().st_mtime_ns == stamp
    assert np.array_equal(again.evaluator.fid.reference.mu, setup.evaluator.fid.reference.mu)
    other = replace(cfg.eval, fid_reference_num_images=3)
    assert reference_description(replace(cfg, eval=other)) != reference_description(cfg)
    assert (
        setup.evaluator.fid is not None and setup.skipped == []
    )  # (the distance itself: test_fid.py, test_evaluator.py)


def test_wrong_reference_npz_names_the_path(tmp_path, assets):
    bad = tmp_path / "ref.npz"
    np.savez(bad, mu=np.zeros(8), sigma=np.eye(8))
    with pytest.raises(ValueError, match=r"ref\.npz.*expected mu \(2048,\)"):
        setup_for(tmp_path, f"eval.fid_inception_path={assets['inception']}", f"eval.fid_reference_path={bad}")


def test_teacher_metrics_computed_once_per_recipe_and_keyed_on_the_sampler(tmp_path, assets):
    more = pixart(assets, f"eval.prompts_path={assets['prompts']}", f"eval.clip_path={assets['clip']}")
    setup, _, calls = setup_for(tmp_path, *more)
    values = setup.teacher_metrics()
    assert set(values) == {"num_samples", "clip_score"} and calls  # the teacher sampled
    assert setup.teacher_metrics() == values
    other_run, _, other_calls = setup_for(tmp_path, *more, "train.max_steps=99", "eval.every=7")  # same teacher+set
    assert other_run.teacher_metrics() == values and not other_calls
    guided, _, guided_calls = setup_for(tmp_path, *more, "diffusion.guidance_scale=3.0")  # another teacher sampler
    guided.teacher_metrics()
    assert guided_calls
    assert len(list((tmp_path / "eval" / "cache").glob("teacher_*.json"))) == 2


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpm++2m"])
def test_teacher_calls_in_the_grid_label_are_the_forwards_its_sampler_makes(solver):
    """Heun evaluates twice per step but once on its Euler step onto the clean endpoint; CFG doubles every one."""
    seen = []

    def denoise(x, t, cond):
        seen.append(x.shape[0])
        return torch.zeros_like(x)

    d = DiffusionConfig(schedule="vp", prediction_type="epsilon", solver=solver, substeps=3, guidance_scale=1.5)
    null_for = Condition(labels=torch.zeros(1, dtype=torch.long)).repeat_interleave
    sampler = TeacherSampler(denoise, VPSchedule(), null_for, 1.5, 4, d, (4, 8, 8))
    sampler(torch.randn(1, 4, 8, 8), Condition(labels=torch.ones(1, dtype=torch.long)))
    assert sampler.calls == sum(seen)


def test_clear_errors(tmp_path, assets):
    with pytest.raises(ValueError, match="nowhere.txt"):
        setup_for(tmp_path, *pixart(assets, f"eval.prompts_path={tmp_path / 'nowhere.txt'}"))
    with pytest.raises(ValueError, match="no_inception.pth"):
        setup_for(tmp_path, f"eval.fid_inception_path={tmp_path / 'no_inception.pth'}")
    with pytest.raises(ValueError, match="no_clip"):
        setup_for(tmp_path, *pixart(assets, f"eval.clip_path={tmp_path / 'no_clip'}"))


def test_grid_labels_run_no_text_encoder(tmp_path, assets, monkeypatch):
    """Rank 0 alone labels the in-loop grid: a T5 forward there would be a ZeRO-3 all-gather the other ranks never
    join (the run hangs once the encoder is big enough to be partitioned), so the labels are the prompts as written."""
    from ard_scale.trainer.conditioning import Conditioner

    setup, _, _ = setup_for(tmp_path, *pixart(assets, f"eval.prompts_path={assets['prompts']}"))
    encoded, encode = [], Conditioner._encode

    def counted(self, captions):
        encoded.append(captions)
        return encode(self, captions)

    monkeypatch.setattr(Conditioner, "_encode", counted)
    labels = setup.grid_labels(4)
    assert labels == ["a handwritten digit one", "a handwritten digit two", "a handwritten digit three"] + [
        "a handwritten digit one"
    ]
    assert encoded == []
    setup.condition_for(torch.arange(2))  # what every rank runs together does encode (the counter sees it)
    assert encoded == [["a handwritten digit one", "a handwritten digit two"]]
    class_setup, _, _ = setup_for(tmp_path)
    assert class_setup.grid_labels(12)[9:] == ["class 9", "class 0", "class 1"]  # sample i is class i mod 10


def test_teacher_metrics_keyed_on_the_resolution(tmp_path, assets):
    """The teacher samples at data.resolution: a run of the same teacher at another resolution sharing the cache
    (eval.cache_dir) gets the teacher's numbers at its own size, not the cached ones of the other size (SD3 takes
    either size)."""
    more = (f"eval.prompts_path={assets['prompts']}", f"eval.clip_path={assets['clip']}")
    small, _, _ = setup_for(tmp_path, *more, recipe="recipes/tiny_sd3_cpu.yaml")
    small_values = small.teacher_metrics()
    large, _, large_calls = setup_for(tmp_path, *more, "data.resolution=64", recipe="recipes/tiny_sd3_cpu.yaml")
    assert large.teacher_sample.noise_shape == (4, 16, 16) and small.teacher_sample.noise_shape == (4, 8, 8)
    large_values = large.teacher_metrics()
    assert large_calls  # sampled at 64 px, not read from the 32 px cache
    assert large_values["clip_score"] != small_values["clip_score"]
    assert len(list((tmp_path / "eval" / "cache").glob("teacher_*.json"))) == 2


def test_teacher_metrics_keyed_on_every_text_encoder_the_family_reads(tmp_path, assets):
    """SD3 reads T5 and two CLIP towers: another CLIP token count (or other CLIP weights) is another teacher condition,
    so the cached numbers of the first are not reused for it."""
    more = (f"eval.prompts_path={assets['prompts']}", f"eval.clip_path={assets['clip']}")
    first, _, _ = setup_for(tmp_path, *more, recipe="recipes/tiny_sd3_cpu.yaml")
    first.teacher_metrics()
    clip_tokens = ("pooled_encoder.max_length=12", "pooled_encoder_2.max_length=12")
    other, _, other_calls = setup_for(tmp_path, *more, *clip_tokens, recipe="recipes/tiny_sd3_cpu.yaml")
    other.teacher_metrics()
    assert other_calls  # sampled under its own CLIP condition, not read from the first one's cache
    assert set(other.teacher_description["text_encoders"]) == {"text_encoder", "pooled_encoder", "pooled_encoder_2"}


def test_fid_with_one_sample_is_refused_when_the_recipe_loads(tmp_path, assets):
    """FID's covariance needs 2 generated images: eval.num_samples=1 with FID is a config error naming the key when
    the recipe loads, not an error at the first evaluation after training to it (before that step's checkpoint)."""
    from ard_scale.config import ConfigError

    one_sample = [f"eval.fid_inception_path={assets['inception']}", "eval.num_samples=1"]
    with pytest.raises(ConfigError, match=r"eval\.num_samples: FID .* needs >= 2 generated images .*, got 1"):
        load_config("recipes/tiny_cpu.yaml", one_sample)
    setup, student, _ = setup_for(tmp_path, *pixart(assets, f"eval.clip_path={assets['clip']}"), "eval.num_samples=1")
    assert set(setup.run(student.sample)) == {"num_samples", "clip_score"}  # one sample is enough for CLIP score
