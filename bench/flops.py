"""ARD FLOP overhead at real sizes, counted with torch's FLOP counter on the meta device (DESIGN.md invariant 4).

    python bench/flops.py --json out.json

For each of dit_xl_2_256, pixart_sigma_1024 (300 T5 tokens), flux_1_dev at 1024px (512 T5 tokens, 4096 packed
image tokens), sd35_large at 1024px (77 CLIP + 256 T5 tokens, StableDiffusion3Pipeline's defaults; 4096 image
tokens of patch 2) and qwen_image at 1024px (512 Qwen2.5-VL tokens, QwenImagePipeline's max_sequence_length, every
caption padded to it; 4096 packed image tokens) with S=4: GFLOPs per sample of S-step sampling and of one
teacher-forced training forward at N=0 and at each N of `--causal-layers` (default 6; FLUX, SD3.5, Qwen-Image: 2, 4,
6), and the overheads over N=0. The paper reports ~1.1 % for DiT-XL/2 sampling. What is counted: every matmul and SDPA
the student runs (torch's FLOP counter on meta); masked SDPA at its full (S·L)² cost. For the joint-attention teachers
(FLUX, SD3.5, Qwen-Image), `text_copy_pct` is the share of each group's tokens that are its own copy of the text
(L_txt / (L_txt + L_img)), and `teacher_steps_ratio` the N=0 training forward over S teacher forwards (1.0: the
per-group text copy costs exactly what the teacher spends on its text tokens each step).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config.ard import ARDConfig  # noqa: E402
from ard_scale.models.families import get_family  # noqa: E402
from ard_scale.models.flops import student_flops  # noqa: E402

# (family, size, text tokens, N values besides 0; None = --causal-layers)
MODELS = (
    ("dit", "dit_xl_2_256", 300, None),
    ("pixart", "pixart_sigma_1024", 300, None),
    ("flux", "flux_1_dev", 512, (2, 4, 6)),
    ("sd3", "sd35_large", 256, (2, 4, 6)),  # text tokens: T5's; the family prepends its 77 CLIP tokens
    ("qwen_image", "qwen_image", 512, (2, 4, 6)),  # Qwen2.5-VL tokens: QwenImagePipeline's max_sequence_length
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--steps", type=int, default=4, help="S")
    parser.add_argument("--causal-layers", type=int, default=6, help="N for the ARD row")
    args = parser.parse_args(argv)

    results = {}
    print(f"{'model':<20}{'N':>3}{'sample GFLOPs':>16}{'train fwd GFLOPs':>18}")
    for family, size, text_tokens, ns in MODELS:
        rows = {}
        for n in (0, *(ns or (args.causal_layers,))):
            cfg = ARDConfig(num_steps=args.steps, num_causal_layers=n)
            rows[n] = student_flops(family, size, cfg, text_tokens=text_tokens)
            print(f"{size:<20}{n:>3}{rows[n]['sampling_gflops']:>16.2f}{rows[n]['train_forward_gflops']:>18.2f}")
        base = rows[0]
        text_tokens = base["text_tokens"]  # as the condition holds them (SD3: 77 CLIP + 256 T5)
        entry = {"S": args.steps, "text_tokens": text_tokens, "image_tokens": base["image_tokens"]}
        entry["sampling_gflops_n0"] = base["sampling_gflops"]
        entry["train_forward_gflops_n0"] = base["train_forward_gflops"]
        for n, row in rows.items():
            if n == 0:
                continue
            sfx = "" if ns is None else f"_n{n}"
            entry[f"sampling_gflops_ard{sfx}"] = row["sampling_gflops"]
            entry[f"train_forward_gflops_ard{sfx}"] = row["train_forward_gflops"]
            entry[f"sampling_overhead_pct{sfx}"] = 100 * (row["sampling_gflops"] / base["sampling_gflops"] - 1)
            entry[f"train_forward_overhead_pct{sfx}"] = 100 * (
                row["train_forward_gflops"] / base["train_forward_gflops"] - 1
            )
            print(
                f"{size:<20} N={n}: sampling overhead {entry[f'sampling_overhead_pct{sfx}']:.3f} %  "
                f"training-forward overhead {entry[f'train_forward_overhead_pct{sfx}']:.3f} %"
            )
        if ns is None:
            entry["N"] = args.causal_layers
        if get_family(family).joint_attention:  # text tokens in self-attention: each group has its own copy
            entry["text_copy_pct"] = 100 * text_tokens / (text_tokens + base["image_tokens"])
            entry["teacher_steps_ratio"] = base["train_forward_gflops"] / (args.steps * base["teacher_gflops"])
            print(
                f"{size:<20} text copy per group: {entry['text_copy_pct']:.1f} % of its tokens; N=0 training forward "
                f"= {entry['teacher_steps_ratio']:.4f} x S teacher forwards"
            )
        results[size] = entry
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
