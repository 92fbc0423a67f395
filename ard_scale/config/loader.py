"""A small, strict loader: YAML recipe + dotted CLI overrides -> a tree of keyword-only dataclasses.

Precedence: CLI overrides (`train.max_steps=100`, values parsed as YAML) > the YAML file > dataclass defaults.
Every problem — unreadable YAML, duplicate or unknown keys (with close matches and the valid keys), wrong types,
values outside a `Literal`'s choices, missing required fields, and each section's `problems()` — is collected
and raised together as one `ConfigError` whose lines each start with the dotted key path.

Supported field types: int, float, bool, str, Literal[...], X | None, list[X], tuple[X, ...], tuple[X, Y],
and nested dataclasses. Every number is range-checked as it is read, by type: floats must be finite, and ints and
floats lie in the section's `BOUNDS[field]` (a `Range`, applied to each number of a list or tuple too) or else in
DEFAULT_RANGES; strings must not be empty. A value out of range is a problem like a wrong type, so the section's
`problems()` and the root's cross-section checks never see it (they may divide by a batch size).

A section's `PATHS` names its fields that hold local paths: `~` and `$VAR` in them are expanded as they are read
(`expand_path`), so every reader of the recipe, its path check and the config.yaml a run saves see the same path, and
a variable that is not set is a problem.

A section may define `problems() -> list[str]` returning 'field: what is wrong' lines (relative to the section);
the root's lines carry full dotted paths. Cross-field checks run on every section whose fields could all be read
(unknown keys aside): one with a wrong type, a value out of range or a missing required field cannot be judged as a
whole, nor can the root when any section could not be read.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ard_scale.errors import UserError

T = TypeVar("T")

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; a float field accepts such numeric strings.
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_MISSING = object()


class ConfigError(UserError):
    """A recipe or override a user got wrong; `.problems` holds one 'dotted.key: what is wrong' line per problem.
    `every_rank`: raised by a check every rank of a run makes alike (one rank need say it)."""

    def __init__(self, source: str, problems: Sequence[str], *, every_rank: bool = False):
        self.source = source
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"invalid config {source}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines), every_rank=every_rank)


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric field (or of each number of a list/tuple field), checked while the field is read."""

    lo: float
    hi: float
    lo_open: bool = False
    """`lo` itself is excluded (e.g. a learning rate must be > 0)."""
    hi_open: bool = False
    """`hi` itself is excluded (e.g. an EMA decay must be < 1)."""

    def __contains__(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


# Fields without their own bound: every int in this tree is a count, size, index or seed, and no float needs to be
# negative or astronomically large; a section's BOUNDS narrows or widens these per field.
DEFAULT_RANGES: dict[type, Range] = {int: Range(0, 2**31 - 1), float: Range(0, 1e6)}
STEPS = Range(1, 10**9)  # step counts and intervals
SEED = Range(0, 2**32 - 1)  # numpy's seed range (torch takes up to 2**64 - 1)
BATCH = Range(1, 2**16)  # samples per rank per micro-step


def _check_range(tp: type, value: float, path: str, bounds: Range | None, problems: list[str]) -> bool:
    if tp is float and not math.isfinite(value):
        problems.append(f"{path}: must be a finite number, got {value}")
        return False
    bounds = bounds or DEFAULT_RANGES[tp]
    if value not in bounds:
        problems.append(f"{path}: {value!r} is out of range; must be in {bounds}")
        return False
    return True


# --------------------------------------------------------------------------------------------- YAML reading


class _StrictYAMLLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader (libyaml's parser where available) that records duplicate mapping keys (PyYAML keeps the last)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # unhashable key; construct_mapping below reports it
                continue
            if dup:
                self.duplicates.append(f"{key}: duplicate key (line {key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, where: str) -> tuple[Any, list[str]]:
    """Parse YAML text; returns (data, problems) and never raises for bad input."""
    loader = _StrictYAMLLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        return None, [f"{where}: not valid YAML ({' '.join(str(e).split())})"]
    finally:
        loader.dispose()
    return data, [f"{where}: {d}" for d in loader.duplicates]


def read_yaml(path: str | Path) -> dict:
    """Read a recipe file into a plain dict, raising ConfigError for unreadable files, bad YAML or a non-mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [f"cannot read the recipe file: {e}"]) from None
    data, problems = _parse_yaml(text, "recipe")
    if problems:
        raise ConfigError(str(path), problems)
    if data is None:
        raise ConfigError(str(path), ["recipe: the file is empty; expected a mapping of sections"])
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"recipe: top level must be a mapping of sections, got {_describe(data)}"])
    return data


# --------------------------------------------------------------------------------------------- overrides


def apply_overrides(data: dict, overrides: Iterable[str]) -> tuple[dict, list[str]]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a copy of `data`; returns (data, problems).

    Later overrides win. A mapping value merges into an existing mapping instead of replacing it.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not one string")
    data = _deepcopy(data)
    problems = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            problems.append(f"override {item!r}: expected key=value, e.g. train.max_steps=100")
            continue
        key, text = item.split("=", 1)
        key = key.strip()
        if not _KEY_RE.match(key):
            problems.append(f"override {item!r}: {key!r} is not a dotted key like train.max_steps")
            continue
        value, yaml_problems = _parse_yaml(text, f"override {item!r}") if text.strip() else (None, [])
        if yaml_problems:
            problems += yaml_problems
            continue
        node, parts = data, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {'.'.join(parts[: i + 1])} is {_describe(child)}, not a section")
                break
            node = child
        else:
            old = node.get(parts[-1])
            node[parts[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return data, problems


def check_override_sections(overrides: Iterable[str], sections: Sequence[str], *, tool: str, why: str) -> None:
    """Raise a ValueError naming every dotted override outside `sections`, for a tool that may change only part of
    a checkpoint's recipe (`tool`: its name; `why`: why the rest is fixed), as export's encoder/VAE overrides are."""
    others = [o for o in overrides if not o.startswith(tuple(f"{section}." for section in sections))]
    if others:
        plural = "s" if len(sections) > 1 else ""
        raise UserError(
            f"{tool} overrides may set only the {', '.join(sections)} section{plural} ({why}), got {others}"
        )


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _deepcopy(x):
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------- building


def _describe(v: Any) -> str:
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(v).__name__} {text}"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, problems: list[str], bounds: Range | None = None) -> Any:
    """Check `value` against `tp` (and numbers against `bounds`, else DEFAULT_RANGES); returns the converted value,
    or _MISSING after appending a problem."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return value
        problems.append(f"{path}: {value!r} is not a valid choice (choose one of {', '.join(map(repr, args))})")
        return _MISSING
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner: list[str] = []
            out = _convert(rest[0], value, path, inner, bounds)
            if len(inner) == 1 and inner[0].startswith(f"{path}: expected "):  # name the null alternative too
                inner = [f"{path}: expected {_type_name(tp)}, got {_describe(value)}"]
            problems += inner
            return out
        raise TypeError(f"{path}: unsupported union {tp}")  # schema bug, not user error
    if origin in (list, tuple):
        if not isinstance(value, list):
            problems.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
            return _MISSING
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            problems.append(f"{path}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
            return _MISSING
        item_types = [args[0]] * len(value) if origin is list or args[-1] is Ellipsis else list(args)
        n_before = len(problems)
        pairs = enumerate(zip(item_types, value, strict=True))
        items = [_convert(t, v, f"{path}[{i}]", problems, bounds) for i, (t, v) in pairs]
        if len(problems) > n_before:
            return _MISSING
        return items if origin is list else tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()) and "e" in value.lower():
            exact = float(value)  # `max_steps=1e4`, a string to PyYAML (see _FLOAT_RE): a whole number in exponent form
            value = int(exact) if exact.is_integer() else value
        if isinstance(value, int) and not isinstance(value, bool):
            return value if _check_range(int, value, path, bounds, problems) else _MISSING
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            number = float(value)
        if number is not None:
            return number if _check_range(float, number, path, bounds, problems) else _MISSING
    elif tp is str:
        if isinstance(value, str) and not value.strip():
            problems.append(f"{path}: empty string; give a value (or null where the field allows it)")
            return _MISSING
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{path}: unsupported field type {tp}")  # schema bug, not user error
    problems.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    return _MISSING


_ENV_VAR_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_path(value: str) -> tuple[str, list[str]]:
    """A recipe's local path as a shell would read it: a leading `~` (or `~user`) is the home folder and `$VAR` or
    `${VAR}` the environment variable's value; returns (the path, the variables that are not set, left as written).
    A URL (`s3://...`) or webdataset `pipe:` command is returned as written: its variables are for the tool that
    fetches it (a token must not be copied into the run's config.yaml)."""
    if "://" in value or value.startswith("pipe:"):
        return value, []
    unset: list[str] = []

    def variable(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            unset.append(name)
            return match.group(0)
        return os.environ[name]

    return _ENV_VAR_RE.sub(variable, os.path.expanduser(value)), unset


def _expanded(value: Any, path: str, problems: list[str]) -> Any:
    """A path field's value with `expand_path` applied; an unset variable is a problem naming it."""
    if not isinstance(value, str):
        return value
    expanded, unset = expand_path(value)
    for name in unset:
        problems.append(
            f"{path}: environment variable ${name} (in {value!r}) is not set; set it, or write the path out"
        )
    return _MISSING if unset else expanded


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type[T], data: Any, path: str, problems: list[str]) -> T | object:
    """Build dataclass `cls` from a mapping, appending every problem found (with dotted paths) to `problems`."""
    prefix = f"{path}." if path else ""
    if not isinstance(data, dict):
        problems.append(f"{path or 'recipe'}: expected a mapping of {cls.__name__} fields, got {_describe(data)}")
        return _MISSING
    hints = _type_hints(cls)
    bounds = getattr(cls, "BOUNDS", {})
    paths = getattr(cls, "PATHS", ())
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            problems.append(f"{prefix}{key}: unknown key ({hint}valid keys: {', '.join(names)})")
    kwargs, complete = {}, True
    for f in fields:
        tp = hints[f.name]
        if f.name in data:
            value = _convert(tp, data[f.name], prefix + f.name, problems, bounds.get(f.name))
            if f.name in paths and value is not _MISSING:
                value = _expanded(value, prefix + f.name, problems)
        elif dataclasses.is_dataclass(tp):  # a missing section is built from its defaults
            value = _build(tp, {}, prefix + f.name, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{prefix}{f.name}: required but missing (expected {_type_name(tp)})")
            value = _MISSING
        else:
            continue
        if value is _MISSING:
            complete = False
        else:
            kwargs[f.name] = value
    if not complete:  # a field could not be read: this section cannot be built or judged as a whole
        return _MISSING
    obj = cls(**kwargs)
    if hasattr(obj, "problems"):
        problems += [prefix + line for line in obj.problems()]
    return obj


def from_dict(cls: type[T], data: Any, source: str = "<dict>") -> T:
    """Build and check `cls` from a plain (nested) dict; raises ConfigError listing every problem."""
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return obj


def check(section: T, path: str) -> T:
    """Check a section built in code (not read from a recipe) as a recipe's would be: types, choices, bounds and
    its `problems()`, with `path` the section's dotted key (e.g. 'data'); raises ConfigError, else returns it as a
    recipe's would be read (its `PATHS` expanded)."""
    problems: list[str] = []
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.init}
    built = _build(type(section), values, path, problems)
    if problems:
        raise ConfigError(f"{type(section).__name__} given in code", problems)
    paths = getattr(section, "PATHS", ())
    return dataclasses.replace(section, **{name: getattr(built, name) for name in paths})


def load(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """Load a YAML recipe into `cls`, applying dotted overrides; raises ConfigError listing every problem."""
    data = read_yaml(path)
    data, problems = apply_overrides(data, overrides)
    obj = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(str(path), problems)
    return obj


# --------------------------------------------------------------------------------------------- writing, hashing


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists/scalars (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any, path: str | Path, header: str | None = None) -> None:
    """Write the resolved config as YAML (loads back to an equal config)."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True, default_flow_style=None)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    Path(path).write_text(text, encoding="utf-8")


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are leaves."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_configs(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two config dicts (or that exist in only one), sorted."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, _MISSING) != fb.get(k, _MISSING))


def dict_hash(d: Mapping) -> str:
    """A stable 16-hex-digit SHA-256 of a plain config dict (key order does not matter)."""
    import hashlib

    blob = json.dumps(to_dict(d), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
