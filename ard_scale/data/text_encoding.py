"""What launchers/precompute_text.py writes beside its MDS shards, besides the per-sample columns:

    text_encoding.json          the family, what was done to the captions before tokenizing (the family's
                                `captions`: 'as given' where the record predates it) and, per encoder slot, the recipe
                                section, its source (path or size, and the weights' fingerprint:
                                `models.folders.encoder_fingerprint`) and max_length the embeddings were made with; the
                                recipe check compares it with a recipe that reads the shards (`encoding_mismatches`)
    null_condition.safetensors  the family's null caption encoded the same way (`text`, `text_mask`, `pooled`): with it
                                a CFG teacher's trainer need not load its text encoders at all

Plain files and tensors only: the trainer turns them into a Condition."""

from __future__ import annotations

import json
import os

import torch

from ard_scale.errors import UserError

ENCODING_FILE = "text_encoding.json"
NULL_FILE = "null_condition.safetensors"


def write_text_encoding(
    out_dir: str, *, family: str, captions: str, sections: dict[str, tuple[str, dict]], null: dict
) -> None:
    """`captions`: the family's caption preprocessing; `sections`: slot -> (recipe section name, {"path", "size",
    "max_length"}); `null`: the null caption's tensors (`text` (L, D), `text_mask` (L,) or None, `pooled` (D,) or
    None)."""
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().float().contiguous() for k, v in null.items() if v is not None}, os.path.join(out_dir, NULL_FILE)
    )
    encoders = {slot: {"section": name, **fields} for slot, (name, fields) in sections.items()}
    record = {
        "format_version": 1, "family": family, "captions": captions, "encoders": encoders, "null_condition": NULL_FILE
    }  # fmt: skip
    with open(os.path.join(out_dir, ENCODING_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


def read_text_encoding(folder: str) -> dict | None:
    """The folder's text_encoding.json, None where there is none (shards precomputed before it was written); an
    unreadable one is a ValueError naming it."""
    path = os.path.join(folder, ENCODING_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record.get("family"), str) or not isinstance(record.get("encoders"), dict):
            raise UserError("no 'family' and 'encoders'")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path} is damaged ({e}); run launchers/precompute_text.py again") from e
    return record


def load_null(folder: str) -> dict[str, torch.Tensor] | None:
    """The precomputed null caption's tensors of shard folder `folder`, None where there are none."""
    path = os.path.join(folder, NULL_FILE)
    if not os.path.isfile(path):
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path} is damaged ({e}); run launchers/precompute_text.py again") from e


def encoding_mismatches(record: dict, family: str, sections: dict[str, tuple[str, dict]]) -> list[str]:
    """How a recipe (its family and, per slot whose encoder it names, (section name, {"size", "max_length",
    "fingerprint"})) differs from the encoding `record` describes, as 'key: recipe value, shards value' lines. Paths
    are not compared (the same encoder may live under another path on the machine that precomputed it), the weights'
    fingerprints are, where both sides have one."""
    if record["family"] != family:
        return [f"teacher.family: {family!r} here, the shards were encoded for {record['family']!r}"]
    out = []
    for slot, (name, fields) in sections.items():
        stored = record["encoders"].get(slot)
        if stored is None:
            out.append(f"{name}: the shards hold no {slot} encoding")
            continue
        for key in ("max_length", "size"):
            if stored.get(key) != fields.get(key):
                out.append(f"{name}.{key}: {fields.get(key)!r} here, {stored.get(key)!r} in the shards")
        ours, theirs = fields.get("fingerprint"), stored.get("fingerprint")
        if ours is not None and theirs is not None and ours != theirs:
            out.append(
                f"{name}.path: {fields.get('path')!r} holds other weights than the shards were encoded with "
                f"({stored.get('path')!r} there; fingerprint {ours} here, {theirs} in the shards)"
            )
    return out
