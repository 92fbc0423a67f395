"""Build webdataset tars and/or MDS shards from a folder of images + same-named .txt, or a CSV/JSONL.

    python launchers/build_shards.py SOURCE OUT_DIR [--formats webdataset mds] [--shard-size 256MB]

SOURCE: a folder (`x.jpg` + `x.txt`, optional `x.json` with {"label": int}), or a .csv/.jsonl with `path`,
`caption` and optional `label` fields (paths relative to the table). Writes OUT_DIR/webdataset (tars +
shards.json) and OUT_DIR/mds, then prints what was skipped and why.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections import Counter

from tqdm import tqdm

from ard_scale.data.sources import iter_source
from ard_scale.data.writers import write_shards

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_size(text: str) -> int:
    """'256MB' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"shard size {text!r} is not like 256MB, 64KB or 1000000")
    return int(match.group(1)) * _UNITS[match.group(2)]


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("source")
    parser.add_argument("out_dir")
    parser.add_argument("--formats", nargs="+", default=["webdataset", "mds"], choices=["webdataset", "mds"])
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("256MB"), help="target shard size")
    parser.add_argument("--gzip", action="store_true", help="write .tar.gz (for tiny images)")
    args = parser.parse_args(argv)

    skipped: Counter = Counter()
    source = iter_source(args.source, skipped)
    first = next(source, None)  # before any output: a source with no valid sample is one error line, nothing written
    if first is None:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.most_common())
        raise ValueError(
            f"no valid sample in {args.source!r}"
            + (f" (skipped {sum(skipped.values())}: {reasons})" if skipped else "")
            + "; nothing written. A folder holds x.jpg (or .png, ...) with its caption in x.txt; a .csv/.jsonl "
            "lists path and caption"
        )
    samples = tqdm(itertools.chain([first], source), desc="samples", unit="img", file=sys.stderr)
    counts = write_shards(
        samples, args.out_dir, formats=tuple(args.formats), shard_bytes=args.shard_size, gzip=args.gzip
    )
    print(f"wrote {counts} to {args.out_dir}")
    print(f"skipped {sum(skipped.values())}" + "".join(f"\n  {n:6d}  {why}" for why, n in skipped.most_common()))
    return counts


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a bad recipe (ConfigError), path or source: its cause and fix, without a traceback
        sys.exit(f"error: {e}")
