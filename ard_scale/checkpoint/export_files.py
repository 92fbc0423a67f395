"""An export folder's files as a loader meets them: reading one (`read_json`, `reading_export`: a missing, truncated
or unparsable file is a ValueError naming it and the command that writes the folder again) and their checksums
(`write_checksums` writes `ard_checksums.json` last; `verify_export` checks every file against it before anything
is read); they are written whole or not at all by `ard_scale.utils.folders.writing_folder`. Used by
`ard_scale.checkpoint.export` (student folders) and `ard_scale.pipeline` (pipeline folders)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from safetensors import SafetensorError

from ard_scale.checkpoint.safe_load import CHECKSUM, file_digest

ARD_CONFIG_FILE = "ard_config.json"
CHECKSUMS_FILE = "ard_checksums.json"

# A missing, truncated or unparsable file (diffusers and transformers raise OSError for weights they cannot read).
READ_ERRORS = (OSError, SafetensorError, json.JSONDecodeError)


def read_json(file: Path) -> dict:
    """A JSON file's content; one that does not parse raises a JSONDecodeError that names the file."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise json.JSONDecodeError(f"{file}: {e.msg}", e.doc, e.pos) from None


def export_source(folder: Path) -> dict:
    """The run and checkpoint an export folder (a student folder or a pipeline's) was written from, where its
    ard_config.json still says."""
    for cfg_file in (folder / ARD_CONFIG_FILE, folder / "transformer" / ARD_CONFIG_FILE):
        with contextlib.suppress(*READ_ERRORS, KeyError, TypeError):  # not there, not JSON, no "source"
            return dict(read_json(cfg_file)["source"])
    return {}


@contextlib.contextmanager
def reading_export(folder: Path):
    """Raise a file the export folder `folder` needs that is missing, truncated or unparsable as a ValueError that
    names the folder, the file's error and the command that writes the folder again."""
    try:
        yield
    except READ_ERRORS as e:
        raise damaged_export(folder, f"{type(e).__name__}: {str(e).rstrip('. ')}") from e


def damaged_export(folder: Path, what: str) -> ValueError:
    """The error for export folder `folder` with damage `what`, naming the command that writes it again."""
    source = export_source(folder)
    run = f"{source['run_dir']} --tag {source['tag']}" if {"run_dir", "tag"} <= set(source) else "RUN_DIR"
    return ValueError(
        f"{folder} is a damaged ARD export: {what}. Write it again from its checkpoint: "
        f"python launchers/export.py {run} --out FOLDER (with the options it was exported with)"
    )


def _files_below(folder: Path, skip: tuple[str, ...]) -> list[Path]:
    """Every regular file under `folder`, sorted, without the top-level entries named in `skip` and without
    symlinked folders (`--link` components are the user's own folders, which may change legitimately)."""
    out = []
    for root, dirs, files in os.walk(folder):  # followlinks=False: a linked folder is listed, not entered
        rel_root = Path(root).relative_to(folder)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        out += [Path(root) / f for f in files if f != CHECKSUMS_FILE and not os.path.islink(os.path.join(root, f))]
    return sorted(out)


def write_checksums(folder: str | Path, *, skip: tuple[str, ...] = ()) -> None:
    """Write `ard_checksums.json` in export folder `folder`: the size and CRC-32 of every file below it (except the
    top-level entries in `skip`, e.g. a pipeline's `transformer/`, which carries its own). Call it last: a folder
    whose manifest is missing was not finished."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_digest(p) for p in _files_below(folder, skip)}
    manifest = {"format_version": 1, "algorithm": CHECKSUM, "files": files}
    (folder / CHECKSUMS_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")


def export_problems(folder: str | Path) -> list[str] | None:
    """Every file of export folder `folder` that does not match its `ard_checksums.json` (missing, another size,
    another CRC-32), each naming the file; [] when all match, None when the folder has no manifest. Files added
    after the export are not checked."""
    folder = Path(folder)
    manifest_file = folder / CHECKSUMS_FILE
    if not manifest_file.is_file():
        return None
    try:
        files = read_json(manifest_file)["files"]
        expected = {str(name): (int(d["size"]), str(d[CHECKSUM])) for name, d in files.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        return [f"{manifest_file}: not a checksum manifest ({type(e).__name__}: {e})"]
    out = []
    for name, (size, crc) in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            out.append(f"{path}: listed in {CHECKSUMS_FILE} but missing")
            continue
        got = file_digest(path)
        if got["size"] != size:
            out.append(f"{path}: {got['size']} bytes, {CHECKSUMS_FILE} recorded {size} (truncated or damaged)")
        elif got[CHECKSUM] != crc:
            out.append(f"{path}: {CHECKSUM} {got[CHECKSUM]}, {CHECKSUMS_FILE} recorded {crc} (damaged bytes)")
    return out


def verify_export(folder: str | Path) -> None:
    """Raise a ValueError naming every file of export folder `folder` that its checksum manifest does not match (and
    the command that writes the folder again); warn when it has no manifest (an export older than checksums)."""
    folder = Path(folder)
    problems = export_problems(folder)
    if problems is None:
        warnings.warn(
            f"{folder} has no {CHECKSUMS_FILE} (exported by an older ard_scale, or not finished): its files cannot "
            "be verified; export it again with launchers/export.py to add checksums",
            stacklevel=3,
        )
    elif problems:
        raise damaged_export(folder, "; ".join(problems))
