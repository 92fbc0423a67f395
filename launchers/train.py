"""Distil a teacher into an ARD student.

    deepspeed --num_gpus 8 launchers/train.py recipes/t2i_1024.yaml [key=value ...]
    torchrun --nproc_per_node 2 launchers/train.py recipes/tiny_cpu.yaml train.max_steps=10

Rerunning the same command with the same checkpoint.run_dir resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config import ConfigError, load_config  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    from ard_scale.trainer.loop import train

    try:
        train(cfg)
    except ConfigError as e:  # found once the data is open, e.g. train.max_steps beyond data.num_epochs
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
