"""What a `data.path` names, resolved without reading a shard or importing a reader's library: the webdataset
readers list their shards here (`shard_urls`), the MDS reader checks its folder here (`check_mds_folder`), and the
recipe check (`ard_scale.config.paths`) calls `check_shard_path` with both, so a path the readers would refuse is
reported before any rank starts, and one they accept (a folder, a shard index, a brace pattern) is not."""

from __future__ import annotations

import glob
import json
import os

from braceexpand import braceexpand

from ard_scale.errors import UserError

INDEX_NAME = "shards.json"  # wids-style shard index written by build_shards: shard urls + sample counts


def is_remote(url: str) -> bool:
    """A url the readers fetch (s3://, https://, a webdataset `pipe:` command), which no local check can vouch for."""
    return "://" in url or url.startswith("pipe:")


def wildcard_hint(path: str, instead: str) -> str:
    """Where `path` holds shell wildcards (`*`, `?`, `[...]`), which no reader expands: a clause saying so and to give
    `instead`, to end an error about a path that does not exist; else ''."""
    if not any(c in path for c in "*?["):
        return ""
    return f"; wildcards (* ? [ ]) are not expanded: give {instead}"


WDS_INSTEAD = f"the folder of the shards, its {INDEX_NAME} or a brace pattern such as shard-{{000000..000099}}.tar"


def index_file(path: str) -> str | None:
    """The shard index webdataset `path` is read through: `path` itself where it names a .json, the folder's
    shards.json where it has one, else None (the tars are counted at start-up)."""
    if path.endswith(".json"):
        return path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, INDEX_NAME)):
        return os.path.join(path, INDEX_NAME)
    return None


def shard_urls(path: str) -> list[tuple[str, int | None]]:
    """(url, number of samples from the index, or None where only the shard knows) of every webdataset shard that
    `path` names: a folder of .tar (or .tar.gz), a shard index .json, or a brace pattern. A path that names no shard, a
    local shard that does not exist, an unreadable index, or remote shards without an index (resume needs the counts)
    is a ValueError naming it."""
    if is_remote(path) and path.endswith(".json"):
        raise UserError(
            f"webdataset index {path!r} is remote, and only a local index is read: copy it to a local file with each "
            "shard's url made whole (build_shards writes them relative to the index) and give data.path that file"
        )
    if path.endswith(".json") or os.path.isdir(path):
        index = index_file(path) or path
        if os.path.isfile(index):
            root = os.path.dirname(index)
            try:
                with open(index, encoding="utf-8") as f:
                    listing = [(s["url"] if is_remote(s["url"]) else os.path.join(root, s["url"]), int(s["nsamples"]))
                               for s in json.load(f)["shardlist"]]  # fmt: skip
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise UserError(
                    f"webdataset index {index!r} is not a shard index ({type(e).__name__}: {e}): it needs "
                    '{"shardlist": [{"url": ..., "nsamples": ...}, ...]}; rebuild it with launchers/build_shards.py'
                ) from e
        elif os.path.isdir(path):
            urls = sorted(glob.glob(os.path.join(path, "*.tar")) + glob.glob(os.path.join(path, "*.tar.gz")))
            listing = [(u, None) for u in urls]
        else:
            raise UserError(f"webdataset index {path!r} does not exist; pass a folder of .tar or build one")
    elif "{" not in path and not is_remote(path) and not os.path.exists(path):
        raise UserError(
            f"webdataset path {path!r} does not exist: give a folder of .tar shards, a {INDEX_NAME} index or a brace "
            "pattern (launchers/build_shards.py writes the first two)" + wildcard_hint(path, WDS_INSTEAD)
        )
    else:
        urls = list(braceexpand(path))
        if any(is_remote(u) for u in urls):
            raise UserError(
                f"webdataset path {path!r} is remote: sample counts are needed for exact resume, so give a local "
                f"{INDEX_NAME} index listing the shards' whole urls and their nsamples (build_shards writes one, with "
                "urls relative to it)"
            )
        listing = [(u, None) for u in urls]
    if not listing:
        raise UserError(f"webdataset path {path!r} holds no .tar shards; point data.path at built shards")
    for url, _ in listing:
        if not is_remote(url) and not os.path.isfile(url):
            hint = wildcard_hint(url, WDS_INSTEAD)
            raise UserError(f"webdataset shard {url!r} (from data.path={path!r}) does not exist{hint}")
    return listing


def check_mds_folder(path: str) -> None:
    """Raise unless local folder `path` is a non-empty MDS dataset whose index's shards are all there."""
    index = os.path.join(path, "index.json")
    if not os.path.isfile(index):
        raise UserError(f"MDS path {path!r} has no index.json: not an MDS dataset (build it with build_shards)")
    try:
        with open(index, encoding="utf-8") as f:
            shards = json.load(f)["shards"]
        total = sum(int(s["samples"]) for s in shards)
        names = [[s[k]["basename"] for k in ("raw_data", "zip_data") if s.get(k)] for s in shards]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"MDS index {index!r} is damaged ({type(e).__name__}: {e}); rebuild the dataset") from e
    if not shards or total == 0:
        raise UserError(f"MDS dataset {path!r} is empty; rebuild it")
    for options in names:
        if not any(os.path.isfile(os.path.join(path, name)) for name in options):
            raise UserError(f"MDS shard {os.path.join(path, options[0])!r} listed in {index} is missing; rebuild")


BUILT_FORMATS = ("webdataset", "mds")  # the subfolders launchers/build_shards.py writes, one per format


def _layout_problem(path: str, format: str, *, path_name: str, format_option: str) -> str | None:
    """What is wrong where local folder `path` holds no `format` shards but the other format's (read them as such),
    or is launchers/build_shards.py's output folder (point at its subfolder); None otherwise."""
    if not os.path.isdir(path):
        return None
    label = {"webdataset": "webdataset", "mds": "MDS"}[format]
    has_tars = bool(glob.glob(os.path.join(path, "*.tar")) + glob.glob(os.path.join(path, "*.tar.gz")))
    has_wds = has_tars or os.path.isfile(os.path.join(path, INDEX_NAME))
    has_mds = os.path.isfile(os.path.join(path, "index.json"))
    if format == "mds" and has_wds and not has_mds:
        return (
            f"MDS path {path!r} has no index.json: it holds webdataset shards (.tar); read them with "
            f"{format_option}webdataset"
        )
    if format == "webdataset" and has_mds and not has_wds:
        return (
            f"webdataset path {path!r} holds no .tar shards: it holds MDS shards (index.json); read them with "
            f"{format_option}mds"
        )
    if has_wds or has_mds:
        return None
    built = [f for f in BUILT_FORMATS if os.path.isdir(os.path.join(path, f))]
    if format in built:
        return (
            f"{label} path {path!r} holds no shards itself: it is launchers/build_shards.py's output folder; point "
            f"{path_name} at its {format}/ subfolder, {os.path.join(path, format)}"
        )
    if built:
        return (
            f"{label} path {path!r} holds no shards itself: it is launchers/build_shards.py's output folder, with "
            f"{built[0]} shards only; give {path_name} {os.path.join(path, built[0])} and {format_option}{built[0]}"
        )
    return None


def check_shard_path(
    path: str, format: str, *, path_name: str = "data.path", format_option: str = "data.format="
) -> None:
    """Raise what the `format` reader would raise about `path` on opening it, without reading a shard (remote MDS
    is not checked: streaming downloads its index itself), or where `path` holds shards in another layout than the
    reader's (the other format's, or build_shards' output folder above them): `path_name` and `format_option` name
    the setting for the fix (a recipe's data.path and data.format=, a launcher's SHARDS and --format )."""
    problem = (
        _layout_problem(path, format, path_name=path_name, format_option=format_option)
        if format in BUILT_FORMATS
        else None
    )
    if problem is not None:
        raise UserError(problem)
    if format == "webdataset":
        shard_urls(path)
    elif format == "mds":
        if not is_remote(path):
            if not os.path.isdir(path):
                raise UserError(
                    f"MDS path {path!r} is not an existing folder (built shards: launchers/build_shards.py)"
                    + wildcard_hint(path, "the dataset's folder, which holds its index.json")
                )
            check_mds_folder(path)
    else:
        raise UserError(f"format={format!r}; choose 'webdataset' or 'mds'")
