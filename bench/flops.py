"""ARD FLOP overhead at real sizes, counted with torch's FLOP counter on the meta device (DESIGN.md invariant 4).

    python bench/flops.py --json out.json

For each of dit_xl_2_256 and pixart_sigma_1024 with S=4: GFLOPs per sample of S-step sampling and of one training
forward at N=0 and N=6, and `sampling_overhead_pct` (N=6 over N=0). The paper reports ~1.1 % for DiT-XL/2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config.ard import ARDConfig  # noqa: E402
from ard_scale.models.flops import student_flops  # noqa: E402

MODELS = (("dit", "dit_xl_2_256"), ("pixart", "pixart_sigma_1024"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--steps", type=int, default=4, help="S")
    parser.add_argument("--causal-layers", type=int, default=6, help="N for the ARD row")
    args = parser.parse_args(argv)

    results = {}
    print(f"{'model':<20}{'N':>3}{'sample GFLOPs':>16}{'train fwd GFLOPs':>18}")
    for family, size in MODELS:
        rows = {}
        for n in (0, args.causal_layers):
            rows[n] = student_flops(family, size, ARDConfig(num_steps=args.steps, num_causal_layers=n))
            print(f"{size:<20}{n:>3}{rows[n]['sampling_gflops']:>16.2f}{rows[n]['train_forward_gflops']:>18.2f}")
        base, ard = rows[0], rows[args.causal_layers]
        results[size] = {
            "S": args.steps,
            "N": args.causal_layers,
            "sampling_gflops_n0": base["sampling_gflops"],
            "sampling_gflops_ard": ard["sampling_gflops"],
            "train_forward_gflops_n0": base["train_forward_gflops"],
            "train_forward_gflops_ard": ard["train_forward_gflops"],
            "sampling_overhead_pct": 100 * (ard["sampling_gflops"] / base["sampling_gflops"] - 1),
            "train_forward_overhead_pct": 100 * (ard["train_forward_gflops"] / base["train_forward_gflops"] - 1),
        }
        print(
            f"{size:<20} sampling overhead {results[size]['sampling_overhead_pct']:.3f} %  "
            f"training-forward overhead {results[size]['train_forward_overhead_pct']:.3f} %"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
