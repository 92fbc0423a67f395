"""Distil a teacher into an ARD student.

    deepspeed --num_gpus 8 launchers/train.py recipes/t2i_1024.yaml [key=value ...]
    torchrun --nproc_per_node 2 launchers/train.py recipes/tiny_cpu.yaml train.max_steps=10

Rerunning the same command with the same checkpoint.run_dir resumes from the newest complete checkpoint.

SIGTERM, SIGINT or SIGUSR1 to the ranks: each saves the step it reached and exits 0, and torchrun then exits 0. A
SIGTERM to the torchrun agent itself is forwarded to the ranks (same clean stop), but torch's agent then re-raises it
and exits 1 with a SignalException traceback whatever the ranks returned (torch/distributed/elastic/agent/server/
api.py, SimpleElasticAgent.run); it also SIGKILLs ranks still running after --shutdown_timeout (30 s by default), so
give it more than a checkpoint save takes.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.trainer.stop import StopSignal  # noqa: E402  (plain Python until it is made: see main)
from ard_scale.utils.cli import local_path  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("recipe", type=local_path)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args(argv)
    # Stop signals are kept from here on, before the seconds of imports and recipe checks: a USR1 then was lost (the
    # Slurm script's torchrun ignores it, and its ranks inherited that), so the run trained on to its time limit.
    stop = StopSignal()
    from ard_scale.config import ConfigError, ConfigWarning, load_config
    from ard_scale.config.paths import check_paths
    from ard_scale.errors import UserError

    # the launcher's rank; else a Slurm task's (tasks srun started directly are refused once, not once per task)
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    try:
        with warnings.catch_warnings():
            if rank != 0:  # every rank reads the same recipe and paths: one says what it found
                warnings.simplefilter("ignore", ConfigWarning)
            cfg = load_config(args.recipe, args.overrides)
            check_paths(cfg, source=str(args.recipe))
    except ConfigError as e:  # every rank stops; one prints (no traceback per rank)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from ard_scale.distributed.engines import finish_process
    from ard_scale.trainer.loop import train

    try:
        train(cfg, stop)
    # a refusal found once the data or models are open (a recipe that does not fit the checkpoint or the teacher, a
    # full disk, a second run in the folder, NaN losses): nothing is lost. Said once when every rank found it, else by
    # the rank that did; anything else is a bug and keeps its traceback.
    except UserError as e:
        if not e.every_rank or rank == 0:
            print(f"error: {e}", file=sys.stderr)
        finish_process(1)
    finish_process(0)  # a finished (or signal-stopped, checkpointed) run exits 0, not -6 in finalisation


if __name__ == "__main__":
    main()
