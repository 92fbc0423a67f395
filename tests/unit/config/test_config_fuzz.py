"""Fuzzed recipes: every malformed recipe ends in one ConfigError naming what is wrong, never another exception.

Mutations of the real recipes: deleted keys, misspelled keys, values of the wrong type, garbage values, sections
that are not mappings, non-mapping or empty files, truncated or corrupted YAML text, and malformed overrides.
Mutations that must be errors assert the key path is named; the others may load, but only as a RootConfig.
"""

from __future__ import annotations

import copy
import math
import random
import warnings
from pathlib import Path

import pytest
import yaml

from ard_scale.config import ConfigError, RootConfig, load_config

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes").glob("*.yaml"))
GARBAGE = [
    None,
    True,
    False,
    0,
    -1,
    7,
    10**30,
    0.5,
    -2.5,
    math.inf,
    math.nan,
    "",
    "garbage",
    "1e-4",
    "[",
    "a: b",
    [],
    [1, "x"],
    [[1]],
    {"a": 1},
    {},
    {"nested": {"x": [None]}},
]
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
ROUNDS = 25  # per recipe and mutation kind; fixed seeds, so every run checks the same cases


def leaves(d: dict, prefix: tuple = ()) -> list[tuple]:
    """Key paths of every value in a nested dict (sections and leaves)."""
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += leaves(v, prefix + (k,))
    return out


def parent_of(d: dict, path: tuple) -> dict:
    for k in path[:-1]:
        d = d[k]
    return d


def misspell(rng: random.Random, key: str, taken: set) -> str:
    while True:
        i = rng.randrange(len(key))
        new = rng.choice([key[:i] + key[i + 1 :], key[:i] + "x" + key[i:], key + "_", key.upper()])
        if new and new not in taken:
            return new


def check_outcome(path: Path, overrides=(), must_fail_naming: list[str] | None = None) -> None:
    """Load; a failure must be a ConfigError with a clean, non-empty message naming every key in must_fail_naming."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = load_config(path, overrides)
    except ConfigError as e:
        msg = str(e)
        assert e.problems and msg.startswith("invalid config "), msg
        assert all(line.startswith("  - ") for line in msg.splitlines()[1:]), msg
        assert "Traceback" not in msg
        for key in must_fail_naming or []:
            assert any(p.startswith(key) for p in e.problems), f"{key!r} not named in:\n{msg}"
        return
    # any other exception type propagates and fails the test
    assert must_fail_naming is None, f"expected a ConfigError naming {must_fail_naming}, but it loaded"
    assert isinstance(cfg, RootConfig)


def dotted(path: tuple) -> str:
    return ".".join(map(str, path))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_fuzzed_recipes_end_in_config_error(tmp_path, recipe):
    rng = random.Random(recipe.name)
    base = yaml.safe_load(recipe.read_text())
    target = tmp_path / "fuzzed.yaml"

    def run(data, overrides=(), must_fail_naming=None):
        target.write_text(yaml.dump(data, Dumper=DUMPER, sort_keys=False))
        check_outcome(target, overrides, must_fail_naming)

    for _ in range(ROUNDS):
        # delete a key: fine if it had a default, else the missing field is named
        data = copy.deepcopy(base)
        path = rng.choice(leaves(data))
        del parent_of(data, path)[path[-1]]
        run(data)

        # misspell a key: always an unknown-key error at that path
        data = copy.deepcopy(base)
        path = rng.choice(leaves(data))
        parent = parent_of(data, path)
        new = misspell(rng, path[-1], set(parent))
        parent[new] = parent.pop(path[-1])
        run(data, must_fail_naming=[dotted(path[:-1] + (new,))])

        # replace any value with garbage: loads or is a ConfigError
        data = copy.deepcopy(base)
        path = rng.choice(leaves(data))
        parent_of(data, path)[path[-1]] = rng.choice(GARBAGE)
        run(data)

        # a mapping or a nested list where a scalar belongs: always a type error at that path
        data = copy.deepcopy(base)
        path = rng.choice([p for p in leaves(data) if not isinstance(parent_of(data, p)[p[-1]], dict)])
        parent_of(data, path)[path[-1]] = rng.choice([{"a": 1}, [[1]], {"x": None}])
        run(data, must_fail_naming=[dotted(path)])

        # a section that is not a mapping
        data = copy.deepcopy(base)
        section = rng.choice(sorted(data))
        data[section] = rng.choice([1, "x", [1, 2], True])
        run(data, must_fail_naming=[section])

        # several independent errors at once: every one is named
        data = copy.deepcopy(base)
        sections = rng.sample(sorted(data), 3)
        for s in sections:
            data[s]["no_such_key"] = 1
        run(data, must_fail_naming=[f"{s}.no_such_key" for s in sections])

        # garbage overrides of existing keys and of random keys
        data = copy.deepcopy(base)
        keys = [dotted(p) for p in leaves(data)]
        value = rng.choice(["", "null", "[", "]", "{a", "x: y", "1e-4", "-3", "true", "[1, [2]]", "{}", "é", "!!x 1"])
        run(data, [f"{rng.choice(keys)}={value}"])
        run(data, [f"{rng.choice(keys)}.{rng.choice(['x', 'y'])}=1"])


def test_corrupted_yaml_text_ends_in_config_error(tmp_path):
    rng = random.Random(0)
    target = tmp_path / "corrupt.yaml"
    for recipe in RECIPES:
        text = recipe.read_text()
        for _ in range(ROUNDS):
            cut = rng.randrange(len(text))
            corrupted = rng.choice(
                [
                    text[:cut],  # truncated
                    text[:cut]
                    + rng.choice(["\t", ":", "{", "[", "- ", "'", '"', "&a", "*b", "!!python/none ", "%"])
                    + text[cut:],
                    text[:cut] + "\n" + text[cut:],
                    text.replace("  ", " ", rng.randrange(1, 5)),  # broken indentation
                ]
            )
            target.write_text(corrupted)
            check_outcome(target)


@pytest.mark.parametrize(
    "text",
    ["", "\n", "# only a comment\n", "null", "[]", "- a\n- b\n", "42", "'a string'", "true", "~", "!!binary aGVsbG8="],
)
def test_empty_or_non_mapping_files_end_in_config_error(tmp_path, text):
    target = tmp_path / "r.yaml"
    target.write_text(text)
    check_outcome(target, must_fail_naming=["recipe"])


BAD_OVERRIDES = ["a.b", "train.max_steps", "=1", ".x=1", "a..b=1", "a.b.=1", "1a=2", " =", "x y=1"]


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_bad_override_syntax_ends_in_config_error(override):
    check_outcome(RECIPES[0], [override], must_fail_naming=["override"])


def test_non_string_keys_and_odd_yaml_end_in_config_error(tmp_path):
    target = tmp_path / "r.yaml"
    base = RECIPES[0].read_text()
    for extra in ["1: x\n", "? [a, b]\n: 1\n", "? {a: 1}\n: 1\n", "train2: &a {x: 1}\ntrain3: *a\n", "<<: {x: 1}\n"]:
        target.write_text(base + extra)
        check_outcome(target, must_fail_naming=[])
