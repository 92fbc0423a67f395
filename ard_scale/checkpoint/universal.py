"""Universal checkpoints: resume a run on a different number of ranks (DESIGN.md §3: ZeRO-3 converts with DeepSpeed's
`ds_to_universal`, ZeRO-1/2 needs its `--inject_missing_state`).

    python -m ard_scale.checkpoint.universal RUN_DIR [--tag step_00001000]

writes RUN_DIR/checkpoints/<tag>_universal next to the tag. Then relaunch on the new number of ranks: the trainer
builds the student engine with `CheckpointManager.resume_ds_config(ds_config)` (which sets
`checkpoint.load_universal=true` when the world size changed) and `load_latest` loads the universal copy. Model
weights, optimizer moments, step counts and client_state carry over; per-rank state (data position, RNG, EMA shards)
does not — `load_latest` returns rank_state=None and the trainer rebuilds it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ard_scale.checkpoint.layout import LATEST, UNIVERSAL_SUFFIX, atomic_write_text
from ard_scale.checkpoint.safe_load import CONFIG, META, verify_dir
from ard_scale.errors import UserError


def to_universal(run_dir: str | Path, tag: str | None = None) -> Path:
    """Convert the complete checkpoint `tag` (default: `latest`) of `run_dir` into a universal checkpoint; returns
    its folder. Runs in one process, no process group needed."""
    from deepspeed.checkpoint import ds_to_universal

    ckpt_dir = Path(run_dir) / "checkpoints"
    if tag is None:
        latest = ckpt_dir / LATEST
        if not latest.is_file():
            raise UserError(f"{latest} does not exist: {run_dir} has no complete checkpoint to convert")
        tag = latest.read_text(encoding="utf-8").strip()
    src = ckpt_dir / tag
    if not (src / META).is_file():
        raise UserError(f"{src} is not a complete checkpoint (no {META}); convert a tag that `latest` has named")
    verify_dir(src)  # ds_to_universal unpickles with weights_only=False: refuse planted objects first
    out = ckpt_dir / (tag + UNIVERSAL_SUFFIX)
    tmp = ckpt_dir / (tag + UNIVERSAL_SUFFIX + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(src),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 checkpoints lack state the universal format needs (ignored for ZeRO-3)
    )
    ds_to_universal.main(args)
    for name in (CONFIG, META):
        shutil.copy2(src / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    atomic_write_text(ckpt_dir / "latest_universal", out.name)  # ds_to_universal wrote the temporary name
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("run_dir", help="the run's checkpoint.run_dir")
    parser.add_argument("--tag", default=None, help="checkpoint tag to convert (default: the one `latest` names)")
    args = parser.parse_args(argv)
    try:
        out = to_universal(args.run_dir, args.tag)
    except UserError as e:  # no or a damaged checkpoint: one line naming it and the fix, as the launchers print
        sys.exit(f"error: {e}")
    print(out)


if __name__ == "__main__":
    main()
