"""Class labels beyond teacher.num_classes, channel options beyond the
latent's channels, metrics.jsonl kept strict JSON, the reachability check of train.max_steps, and the recipe's ZeRO
offload settings in the student engine's DeepSpeed config (one process)."""

import json
import math

import pytest
import torch

from ard_scale.config import ConfigError, load_config
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.solvers import guided_model
from ard_scale.trainer.build import build_conditioner, build_teacher_model, student_engine_config
from ard_scale.trainer.checks import check_channel_options, check_guidance
from ard_scale.trainer.loop import MetricsLog, all_finite, check_reachable

RECIPE = "recipes/tiny_cpu.yaml"


def test_a_label_beyond_num_classes_is_an_error_at_the_first_batch_naming_both():
    cfg = load_config(RECIPE, ["teacher.num_classes=3"])  # the bundled digits have 10 classes
    teacher = build_teacher_model(cfg)
    conditioner = build_conditioner(cfg, teacher)
    cond, _ = conditioner({"labels": torch.tensor([0, 2]), "keys": ["a", "b"], "captions": ["", ""]})
    teacher.model(torch.randn(2, 4, 4, 4), torch.tensor([1, 1]), class_labels=cond.labels)  # in range: runs
    with pytest.raises(ValueError, match=r"class label 7 \(sample 'c'\) is outside teacher.num_classes=3"):
        conditioner({"labels": torch.tensor([1, 7]), "keys": ["b", "c"], "captions": ["", ""]})
    with pytest.raises(ValueError, match="class label 3 .*num_classes=3"):  # 3 is the null class, not data
        conditioner({"labels": torch.tensor([3]), "captions": [""]})
    with pytest.raises(ValueError, match="class label -2 "):
        conditioner({"labels": torch.tensor([-2]), "captions": [""]})


def test_a_batch_mixing_labelled_and_unlabelled_samples_names_the_unlabelled_one():
    """collate kept labels only when every sample of a batch had one: a class-conditional run on shards where a few
    samples lack a label stopped at some step saying the shards carry no labels at all; a batch of only unlabelled
    samples still did."""
    from ard_scale.data.samples import collate

    image = torch.zeros(3, 8, 8)
    batch = collate(
        [{"image": image, "caption": "", "key": "a", "label": 4}, {"image": image, "caption": "", "key": "b"}]
    )
    assert batch["labels"].tolist() == [4, -1]
    assert "labels" not in collate([{"image": image, "caption": "", "key": "b"}])  # text data: no labels at all
    conditioner = build_conditioner(load_config(RECIPE), build_teacher_model(load_config(RECIPE)))
    with pytest.raises(ValueError, match="sample 'b' has no class label, beside samples that have one"):
        conditioner(batch)
    # a batch whose samples all lack a label, in shards where others have one: named too (not 'the shards carry none')
    unlabelled = collate([{"image": image, "caption": "", "key": k} for k in ("b", "c")])
    with pytest.raises(ValueError, match="needs class labels, but samples b, c have no class label; write shards with"):
        conditioner(unlabelled)


def test_guidance_channels_beyond_the_latent_are_refused_at_build_time():
    cfg = load_config(RECIPE, ["diffusion.guide_first_channels=99"])
    teacher = build_teacher_model(cfg)
    with pytest.raises(ConfigError, match=r"diffusion.guide_first_channels: 99 > the teacher's 4 latent channels"):
        check_channel_options(cfg, teacher)
    check_channel_options(load_config(RECIPE, ["diffusion.guide_first_channels=3"]), teacher)
    model = guided_model(lambda x, t, c: x, Condition(labels=torch.tensor([0])), Condition(labels=torch.tensor([1])),
                         1.5, guided_channels=99)  # fmt: skip
    with pytest.raises(ValueError, match=r"guided_channels=99 must be in \[1, 4\]"):
        model(torch.randn(1, 4, 2, 2), torch.tensor([0.5]))


def test_a_guidance_scale_a_flux_teacher_without_guidance_embedding_ignores_is_said():
    """FLUX.1-schnell (guidance_embeds=False) samples unguided, as FluxPipeline does: a guidance_scale from a
    FLUX.1-dev recipe did nothing, silently; now a ConfigWarning says so. A dev teacher, or scale 1, says nothing."""
    import warnings

    from ard_scale.config import ConfigWarning
    from ard_scale.models.teachers import build_teacher

    cfg = load_config("recipes/tiny_flux_cpu.yaml", ["diffusion.guidance_scale=3.5"])
    schnell = build_teacher("flux", "debug", guidance_embeds=False)
    with pytest.warns(ConfigWarning, match=r"diffusion.guidance_scale=3.5 is ignored: this flux teacher embeds no"):
        check_guidance(cfg, schnell)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_guidance(cfg, build_teacher_model(cfg))  # FLUX.1-dev's debug size embeds it
        check_guidance(load_config("recipes/tiny_flux_cpu.yaml", ["diffusion.guidance_scale=1.0"]), schnell)


def test_metrics_jsonl_stays_strict_json_with_non_finite_numbers(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    record = {"step": 1, "loss": math.nan, "lr": math.inf, "loss_per_step": [1.0, -math.inf], "grad_norm": None}
    assert not all_finite(record) and all_finite({"step": 1, "loss": 0.5, "loss_per_step": [1.0], "g": None})
    log.write(record)
    log.write({"step": 2, "loss": 0.25})

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    lines = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {"step": 1, "loss": None, "lr": None, "loss_per_step": [1.0, None], "grad_norm": None},
        {"step": 2, "loss": 0.25},
    ]


def test_max_steps_beyond_what_finite_data_gives_is_a_config_error():
    cfg = load_config(RECIPE, ["train.max_steps=4", "train.grad_accum=2", "data.num_epochs=1"])
    check_reachable(cfg, None, rank=0, world=1)  # streams forever
    check_reachable(cfg, 8, rank=0, world=1)  # 8 batches = 4 steps of 2 micro-batches
    with pytest.raises(ConfigError, match=r"train.max_steps: 4 steps cannot be reached.* at most 3 steps"):
        check_reachable(cfg, 7, rank=0, world=1)
    check_reachable(cfg, 2, rank=0, world=1, start=3)  # a universal resume restarts the stream at step 3


def test_zero_offload_settings_reach_the_student_engines_config():
    plain = student_engine_config(load_config(RECIPE))
    assert plain["zero_optimization"] == {"stage": 3} and plain["optimizer"]["params"]["torch_adam"]
    cfg = load_config(RECIPE, ["zero.offload_optimizer=true", "zero.offload_params=true"])
    ds = student_engine_config(cfg)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    only_optimizer = student_engine_config(load_config(RECIPE, ["zero.offload_optimizer=true"]))["zero_optimization"]
    assert "offload_optimizer" in only_optimizer and "offload_param" not in only_optimizer
