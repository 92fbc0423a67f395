"""Loader behaviour: precedence, strict errors reported together with key paths, round trip, hashing."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from ard_scale.config import (
    ConfigError,
    ConfigWarning,
    config_from_dict,
    config_hash,
    diff_configs,
    dump_yaml,
    load_config,
    recipe_changes,
    to_dict,
)

RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes"

MINIMAL = {
    "teacher": {"family": "dit", "size": "debug", "num_classes": 10},
    "diffusion": {"schedule": "vp", "prediction_type": "epsilon", "guidance_scale": 1.5},
    "data": {"format": "webdataset", "path": "shards", "resolution": 32, "batch_size": 2},
    "train": {"max_steps": 10, "lr": 1.0e-3},
    "checkpoint": {"run_dir": "runs/x"},
}


def write(tmp_path: Path, data, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def errors_of(path, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


# ------------------------------------------------------------------------------------------------- precedence


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    p = write(tmp_path, MINIMAL)
    cfg = load_config(p)
    assert cfg.train.max_steps == 10  # YAML
    assert cfg.train.grad_accum == 1 and cfg.student.num_steps == 4  # defaults
    cfg = load_config(p, ["train.max_steps=100", "train.grad_accum=2", "train.max_steps=200"])
    assert cfg.train.max_steps == 200  # CLI beats YAML; the later override wins
    assert cfg.train.grad_accum == 2  # CLI beats the default


def test_override_values_are_parsed_as_yaml(tmp_path):
    p = write(tmp_path, MINIMAL)
    cfg = load_config(
        p,
        [
            "gan.enabled=true",  # bool, and a section the YAML does not have
            "gan.warmup_steps=2",
            "train.precision=bf16",
            "train.lr=1e-4",  # YAML 1.1 reads this as a string; float fields accept it
            "train.betas=[0.5, 0.9]",  # a list becomes the tuple field
            "train.grad_clip=null",
            "train.loss_weights=[1, 2, 3, 4]",
            "eval.fid_inception_path=/models/a=b.pth",  # only the first '=' splits
            "train={warmup_steps: 7}",  # a mapping merges into the section
        ],
    )
    assert cfg.gan.enabled is True and cfg.train.precision == "bf16" and cfg.train.lr == 1e-4
    assert cfg.train.betas == (0.5, 0.9) and cfg.train.grad_clip is None
    assert cfg.train.loss_weights == [1.0, 2.0, 3.0, 4.0] and all(type(w) is float for w in cfg.train.loss_weights)
    assert cfg.eval.fid_inception_path == "/models/a=b.pth"
    assert cfg.train.warmup_steps == 7 and cfg.train.max_steps == 10


# ------------------------------------------------------------------------------------------------- errors


def test_every_class_of_error_is_reported_together_with_its_key_path(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["train"]["max_step"] = 5  # misspelled key
    data["train"]["lr"] = "fast"  # wrong type
    data["zero"] = {"stage": 4}  # not a Literal choice
    del data["data"]["batch_size"]  # missing required field
    data["student"] = {"window": 0}  # out of the field's bounds
    data["gan"] = "yes"  # a section that is not a mapping
    data["teacher"]["num_classes"] = True  # bool is not an int
    data["eval"] = {"every": [1]}  # list for an optional int
    p = write(tmp_path, data)
    e = errors_of(p, ["log.evry=3", "checkpoint.keep_last"])
    msg = str(e)
    expected = {
        "train.max_step": "did you mean max_steps",
        "train.lr": "expected float, got str 'fast'",
        "zero.stage": "choose one of 0, 1, 2, 3",
        "data.batch_size": "required",
        "student.window": "0 is out of range; must be in [1, 1000]",
        "gan": "expected a mapping",
        "teacher.num_classes": "expected int or null, got bool",
        "eval.every": "got list",
        "log.evry": "did you mean every",
        "override 'checkpoint.keep_last'": "expected key=value",
    }
    for key, what in expected.items():
        line = next((line for line in e.problems if line.startswith(key)), None)
        assert line is not None, f"{key} not named in:\n{msg}"
        assert what in line, line
        assert f"  - {line}" in msg
    assert len(e.problems) == len(expected), msg
    assert "valid keys: max_steps, grad_accum" in msg  # the valid keys are listed
    assert isinstance(e, ValueError)
    assert "\n\n" not in msg and msg.startswith(f"invalid config {p}: {len(expected)} problems")


def test_cross_section_problems_are_reported_together(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["teacher"] = {"family": "pixart", "size": "debug", "path": "/models/t"}
    data["train"].update(trajectory_source="replay", replay_times=0, loss_weights=[1.0, 1.0])
    data["gan"] = {"enabled": True}
    data["data"]["path"] = None
    data["zero"] = {"stage": 2, "offload_params": True}
    e = errors_of(write(tmp_path, data))
    expected = [
        "teacher.size/path",
        "text_encoder.path",
        "train.replay_times",
        "train.loss_weights",
        "data.path",  # no conditions for online trajectories, no real images for the GAN
        "zero.offload_params",
    ]
    for key in expected:
        assert any(line.startswith(key) for line in e.problems), f"{key} not named in:\n{e}"
    assert sum(line.startswith("data.path") for line in e.problems) == 2


def test_x0_record_is_refused_since_the_trainer_regresses_the_noisy_states(tmp_path):
    """diffusion.record=x0 trained on the noisy states all the same (the trajectory sources return `states`)."""
    e = errors_of(write(tmp_path, MINIMAL), ["diffusion.record=x0"])
    assert any(line.startswith("diffusion.record: 'x0' is not a training target") for line in e.problems), str(e)
    load_config(write(tmp_path, MINIMAL), ["diffusion.record=noisy"])


def test_every_frozen_component_takes_a_size_or_a_path_not_both(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    sections = ["text_encoder", "pooled_encoder", "pooled_encoder_2", "qwen_encoder", "vae"]
    for section in sections:
        data[section] = {"size": "debug", "path": "/models/x"}
    e = errors_of(write(tmp_path, data))
    for section in sections:
        assert f"{section}.size/path: set at most one" in str(e), f"{section} not named in:\n{e}"


def test_yaml_level_errors(tmp_path):
    assert "empty" in str(errors_of(write(tmp_path, "")))
    assert "top level must be a mapping" in str(errors_of(write(tmp_path, "- a\n- b\n")))
    assert "not valid YAML" in str(errors_of(write(tmp_path, "train: {max_steps: 3\n")))
    assert "cannot read" in str(errors_of(tmp_path / "missing.yaml"))
    dup = yaml.safe_dump(MINIMAL) + "train:\n  lr: 0.1\n"
    assert "train: duplicate key (line" in str(errors_of(write(tmp_path, dup)))


@pytest.mark.parametrize(
    "override, what",
    [
        ("train.max_steps", "expected key=value"),
        ("=3", "not a dotted key"),
        ("train..lr=1", "not a dotted key"),
        ("train.lr=[1, 2", "not valid YAML"),
        ("train.max_steps.x=1", "not a section"),
        ("train.max_steps=5.0", "expected int, got float"),
        ("train.precision=fp8", "choose one of 'fp32', 'bf16', 'fp16'"),
        ("nope.x=1", "nope: unknown key"),
    ],
)
def test_bad_overrides(tmp_path, override, what):
    assert what in str(errors_of(write(tmp_path, MINIMAL), [override]))


def test_a_count_in_exponent_form_is_read_as_the_whole_number(tmp_path):
    """PyYAML (YAML 1.1) reads `1e4` as a string: train.max_steps=1e4 was refused as 'expected int, got str'."""
    p = write(tmp_path, MINIMAL)
    assert load_config(p, ["train.max_steps=1e4"]).train.max_steps == 10_000
    assert load_config(p, ["train.max_steps=2.5E3"]).train.max_steps == 2_500
    assert "train.max_steps: expected int, got str '1.5e0'" in str(errors_of(p, ["train.max_steps=1.5e0"]))


def test_strict_scalar_types(tmp_path):
    p = write(tmp_path, MINIMAL)
    for override in ("train.max_steps='5'", "gan.enabled=1", "checkpoint.run_dir=5", "train.lr=true"):
        with pytest.raises(ConfigError):
            load_config(p, [override])


def test_ignored_settings_warn(tmp_path):
    p = write(tmp_path, MINIMAL)
    with pytest.warns(ConfigWarning, match="replay_times is ignored"):
        load_config(p, ["train.replay_times=3"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(p, ["train.trajectory_source=replay", "train.replay_times=3"])


def test_the_gan_weight_setting_the_adaptive_weight_replaces_warns(tmp_path):
    """gan.weight with gan.adaptive (the default), or adaptive_lambda without it, changed nothing, silently."""
    p = write(tmp_path, MINIMAL)
    with pytest.warns(ConfigWarning, match=r"gan.weight=0.1 is ignored: gan.adaptive computes the weight"):
        load_config(p, ["gan.weight=0.1"])
    with pytest.warns(ConfigWarning, match="gan.adaptive_lambda/adaptive_max are ignored: gan.adaptive is false"):
        load_config(p, ["gan.adaptive=false", "gan.adaptive_lambda=10"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(p, ["gan.adaptive=false", "gan.weight=0.1"])
        load_config(p, ["gan.adaptive_lambda=10"])


def test_a_shift_setting_the_other_shift_mode_ignores_warns(tmp_path):
    """diffusion.shift under dynamic_shift, or the dynamic shift's curve without it, changed nothing, silently."""
    flow = {**MINIMAL, "diffusion": {"schedule": "flow", "prediction_type": "flow", "guidance_scale": 1.5}}
    p = write(tmp_path, flow)
    with pytest.warns(ConfigWarning, match=r"diffusion.shift=3.0 is ignored: diffusion.dynamic_shift sets"):
        load_config(p, ["diffusion.dynamic_shift=true", "diffusion.shift=3.0"])
    with pytest.warns(ConfigWarning, match="diffusion.max_shift/max_seq_len is ignored without diffusion.dynamic"):
        load_config(p, ["diffusion.shift=3.0", "diffusion.max_shift=0.9", "diffusion.max_seq_len=8192"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(p, ["diffusion.shift=3.0"])
        load_config(p, ["diffusion.dynamic_shift=true", "diffusion.max_shift=0.9", "diffusion.max_seq_len=8192"])


def test_gather_teacher_once_warns_only_where_the_teacher_is_held_whole(tmp_path):
    """A LoRA student sharing the teacher holds its weights at zero.stage, whatever zero.teacher_stage says: there
    gather_teacher_once works at stage 3 (it warned "ignored") and is ignored below it."""
    p = write(tmp_path, MINIMAL)
    once = "zero.gather_teacher_once=true"
    with pytest.warns(ConfigWarning, match="gather_teacher_once is ignored: zero.teacher_stage 0 keeps the teacher"):
        load_config(p, [once, "zero.teacher_stage=0"])
    shared = ["student.lora.rank=4", "zero.teacher_stage=0"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(p, [once, *shared])
    assert not [w for w in caught if "gather_teacher_once" in str(w.message)]
    with pytest.warns(ConfigWarning, match=r"ignored: zero.stage 2 \(share_teacher\) keeps the teacher whole"):
        load_config(p, [once, *shared, "zero.stage=2"])


def test_gan_init_from_without_the_gan_stage_warns_that_the_student_starts_from_the_teacher(tmp_path):
    """The GAN stage's command without gan.enabled=true trained a fresh regression run, silently."""
    p = write(tmp_path, MINIMAL)
    with pytest.warns(ConfigWarning, match="gan.init_from='runs/reg' is ignored: gan.enabled is false"):
        load_config(p, ["gan.init_from=runs/reg"])


# ------------------------------------------------------------------------------------------------- dump, hash, diff


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_dump_load_round_trip(tmp_path, path):
    cfg = load_config(path, ["train.lr=3e-5", "gan.layers=[0, 2]"])
    out = tmp_path / "resolved.yaml"
    dump_yaml(cfg, out, header="resolved")
    again = load_config(out)
    assert again == cfg
    assert config_from_dict(to_dict(cfg)) == cfg
    assert config_hash(again) == config_hash(cfg) == config_hash(to_dict(cfg))


def test_config_hash_covers_training_fields_only():
    path = RECIPES_DIR / "imagenet_256.yaml"
    base = load_config(path)
    h = config_hash(base)
    assert h == config_hash(load_config(path)) and len(h) == 16
    for override in ("train.lr=2e-4", "student.num_causal_layers=0", "diffusion.guidance_scale=2.0", "data.seed=1"):
        assert config_hash(load_config(path, [override])) != h, override
    unhashed = ("checkpoint.run_dir=/elsewhere", "log.every=1", "eval.every=7", "train.max_steps=400000",
                "gan.stop_on_divergence=true", "gan.divergence_factor=5")  # fmt: skip
    for override in unhashed:
        assert config_hash(load_config(path, [override])) == h, override
    changed = load_config(path, ["train.lr=2e-4", "checkpoint.run_dir=/elsewhere", "student.mask=first"])
    assert recipe_changes(base, changed) == ["student.mask", "train.lr"]


def test_diff_configs():
    a = {"train": {"lr": 1.0, "betas": [0.9, 0.99]}, "log": {"every": 1}, "x": 1}
    b = {"train": {"lr": 2.0, "betas": [0.9, 0.999]}, "log": {"every": 1}, "y": {"z": 2}}
    assert diff_configs(a, b) == ["train.betas", "train.lr", "x", "y.z"]
    assert diff_configs(a, a) == []


def test_cli_checker(capsys):
    from ard_scale.config.__main__ import main

    assert main([str(RECIPES_DIR / "tiny_cpu.yaml"), "train.max_steps=9"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 9" in out and "# config_hash: " in out
    assert main([str(RECIPES_DIR / "tiny_cpu.yaml"), "train.max_stepz=9"]) == 2
    assert "train.max_stepz: unknown key (did you mean max_steps?" in capsys.readouterr().err
