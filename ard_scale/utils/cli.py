"""argparse types for the launchers' options. A local path (`local_path`) reads `~` as the shell would; a count of 0
or a negative size is argparse's one usage line naming the option (exit status 2) before any work, not a traceback
from deep inside, an error with another cause, or a silently replaced value, minutes later. Plain Python, importable
from every layer."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def count(minimum: int = 1):
    """An argparse `type` for an integer option that must be >= `minimum` (steps, batch sizes, token counts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse `type` for a finite number > 0 (a learning rate, GPU memory in GB, a polling period)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def local_path(text: str) -> Path:
    """An argparse `type` for a local file or folder: a leading `~` is the home folder, as the shell would read it in
    `--out ~/x` but does not in `--out=~/x` (which made a folder named '~')."""
    return Path(text).expanduser()
