"""Every numeric, string and typed field of every recipe, mutated to 0, -1, inf, nan, 1e30, 10**30,
"" and a value of the wrong type, is either a ConfigError naming that key or a config that is usable (strict JSON,
seeds that numpy and torch take, a schedule that builds, data settings the reader accepts). Config loading only:
deterministic and fast. Also: the checks never divide by an unchecked value."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ard_scale.config import ConfigError, RootConfig, config_from_dict, load_config, to_dict
from ard_scale.config.data import check_readable
from ard_scale.config.loader import DEFAULT_RANGES, Range
from ard_scale.diffusion.schedules import schedule_for_recipe
from ard_scale.utils.noise import MAX_INDEX, Stream, noise_seed

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes").glob("*.yaml"))
MUTATIONS = [0, -1, math.inf, -math.inf, math.nan, 1e30, 10**30, "", "   "]


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted key, type) of every field of the schema, defaults included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hints[f.name]))
    return out


FIELDS = leaf_fields(RootConfig)


def wrong_type(tp) -> typing.Any:
    """A value of a type the field does not accept."""
    base = {a for a in typing.get_args(tp) if a is not type(None)} or {tp}
    if base & {int, float} or typing.get_origin(tp) is typing.Literal:
        return "many"
    if str in base:
        return 5
    if bool in base:
        return "yes"
    return 3  # lists and tuples


def with_value(recipe: dict, key: str, value) -> dict:
    data = copy.deepcopy(recipe)
    *sections, name = key.split(".")
    node = data
    for s in sections:
        node = node.setdefault(s, {})
    node[name] = value
    return data


def names(problem: str) -> set[str]:
    """The dotted keys a problem line names: 'a.b/c: ...' names a.b and a.c."""
    head = problem.split(":", 1)[0]
    section, _, fields = head.rpartition(".")
    return {f"{section}.{f}" if section else f for f in fields.split("/")}


def usable(cfg: RootConfig) -> None:
    """What the run does with the numbers first, cheaply; raises where the config would fail later."""
    json.dumps(to_dict(cfg), allow_nan=False)  # nothing non-finite anywhere
    np.random.default_rng([cfg.data.seed, 0])  # the webdataset order
    np.random.RandomState(cfg.data.seed)  # numpy's legacy seed range
    for stream in Stream:  # the largest noise seed of each stream is a valid torch seed
        torch.Generator().manual_seed(noise_seed(stream, cfg.train.seed, MAX_INDEX))
    side = cfg.data.resolution // 8 if (cfg.vae.path or cfg.vae.size) else cfg.data.resolution
    schedule = schedule_for_recipe(cfg.diffusion, side, 2)
    grid = schedule.grid(cfg.student.num_steps)
    assert torch.isfinite(torch.as_tensor(grid)).all()
    cfg.student.validate()
    if cfg.data.path is not None:
        check_readable(cfg.data)  # the readers take the section as it is
    assert cfg.data.batch_size * cfg.train.grad_accum >= 1


def outcome(data: dict, key: str) -> str:
    try:
        cfg = config_from_dict(data, "fuzz")
    except ConfigError as e:
        assert any(key in names(p) for p in e.problems), f"{key} not named in:\n{e}"
        return "error"
    usable(cfg)
    return "loaded"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_mutation_of_every_field_is_an_error_naming_it_or_usable(recipe):
    base = yaml.safe_load(recipe.read_text())
    counts = {"error": 0, "loaded": 0}
    for key, tp in FIELDS:
        for value in [*MUTATIONS, wrong_type(tp)]:
            counts[outcome(with_value(base, key, value), key)] += 1
    assert counts["error"] > 0 and counts["loaded"] > 0, counts  # both outcomes occur: the test can tell them apart
    assert sum(counts.values()) == len(FIELDS) * (len(MUTATIONS) + 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.lr", math.inf),
        ("train.lr", 1e30),
        ("diffusion.guidance_scale", math.inf),
        ("train.weight_decay", 1e30),
        ("vae.scaling_factor", math.inf),
        ("gan.d_lr", 1e30),
        ("gan.adaptive_lambda", math.nan),
        ("train.max_steps", 10**30),
        ("data.batch_size", 10**30),
        ("data.resolution", 10**30),
        ("data.seed", -1),
        ("train.seed", -3),
        ("data.path", ""),
        ("checkpoint.run_dir", " "),
        ("eval.fid_inception_path", ""),
    ],
)
def test_the_holes_fuzzing_found_are_config_errors_naming_the_key(key, value):
    base = yaml.safe_load((RECIPES[0].parent / "tiny_cpu.yaml").read_text())
    with pytest.raises(ConfigError) as e:
        config_from_dict(with_value(base, key, value), "fuzz")
    assert [p for p in e.value.problems if key in names(p)], str(e.value)


def test_a_zero_batch_size_with_a_global_batch_size_is_an_error_not_a_division(tmp_path):
    recipe = RECIPES[0].parent / "tiny_cpu.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(recipe, ["data.batch_size=0", "train.global_batch_size=8", "train.grad_accum=0"])
    problems = e.value.problems
    assert any(p.startswith("data.batch_size: 0 is out of range") for p in problems), problems
    assert any(p.startswith("train.grad_accum: 0 is out of range") for p in problems), problems


def test_yaml_infinities_and_overrides_go_through_the_same_check(tmp_path):
    recipe = RECIPES[0].parent / "tiny_cpu.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(recipe, ["train.lr=.inf", "diffusion.guidance_scale=.nan", "train.betas=[0.9, 1.0]"])
    lines = {p.split(":", 1)[0]: p for p in e.value.problems}
    assert "finite" in lines["train.lr"] and "finite" in lines["diffusion.guidance_scale"]
    assert lines["train.betas[1]"] == "train.betas[1]: 1.0 is out of range; must be in [0, 1)"


def test_range_bounds_and_defaults():
    assert 0 in Range(0, 1) and 0 not in Range(0, 1, lo_open=True) and 1 not in Range(0, 1, hi_open=True)
    assert str(Range(0, 1, hi_open=True)) == "[0, 1)"
    assert -1 not in DEFAULT_RANGES[int] and 10**30 not in DEFAULT_RANGES[int] and 1e30 not in DEFAULT_RANGES[float]
