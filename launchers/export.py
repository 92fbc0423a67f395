"""Export a run's newest complete checkpoint as a diffusers-format ARD student folder.

    python launchers/export.py RUN_DIR [--out DIR] [--tag step_00001000] [--raw]

Writes the backbone as the teacher's diffusers class (head 0 as its final layer), `ard_heads.safetensors` and
`ard_config.json` (see ard_scale/checkpoint/export.py). Weights: the EMA when the checkpoint has one, else (and with
--raw) the raw student rebuilt from the ZeRO shards. Sample from it with launchers/sample.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the run's checkpoint.run_dir")
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: RUN_DIR/export/<tag>)")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the one `latest` names)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights even if an EMA exists")
    args = parser.parse_args(argv)

    from ard_scale.checkpoint.export import _resolve_tag, export_student

    try:
        tag = _resolve_tag(args.run_dir / "checkpoints", args.tag)
        out = export_student(args.run_dir, args.out or args.run_dir / "export" / tag, tag=tag, use_ema=not args.raw)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(out)


if __name__ == "__main__":
    main()
