"""JSON that stays JSON: json.dumps writes a non-finite float as a bare NaN or Infinity, which no strict JSON reader
(jq, JavaScript, most languages' parsers) accepts. The run's metrics.jsonl and launchers/eval.py's results write them
as null."""

from __future__ import annotations

import math


def strict_json(value):
    """`value` with every non-finite float replaced by None: json.dumps writes NaN/Infinity otherwise, which is
    not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value
