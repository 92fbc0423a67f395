"""Sample a PNG grid from an exported ARD student with its KV-cached S-step sampler.

    python launchers/sample.py EXPORT_DIR --labels 1 2 3 [--out grid.png] [--seed 0]          # class-conditional
    python launchers/sample.py EXPORT_DIR --prompts-embeddings emb.pt [--out grid.png]        # text-to-image

--prompts-embeddings: a torch file holding T5 embeddings (B, L, C) or a dict {"text": (B, L, C), "text_mask": (B, L),
"pooled": (B, C_pool)} ("pooled": CLIP's pooled embedding, for FLUX.1). A guidance-distilled student (FLUX.1-dev) is
conditioned on the guidance value recorded in its export. Decoding is kept simple: pixel-space students (1 or 3
channels) are shown as images ([-1, 1] -> [0, 255]); latent students show latent channels 0..2, each image
normalised to [0, 255].
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def to_uint8(x_BCHW: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) samples -> (B, H, W, 3) uint8 images."""
    if x_BCHW.shape[1] in (1, 3):  # pixel space
        img = (x_BCHW.clamp(-1, 1) + 1) / 2
    else:  # latents: channels 0..2, per-image min-max
        img = x_BCHW[:, :3]
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        img = (img - lo) / (hi - lo).clamp(min=1e-8)
    img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
    return (img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def grid(images_BHWC: np.ndarray, ncol: int) -> np.ndarray:
    B, H, W, C = images_BHWC.shape
    nrow = math.ceil(B / ncol)
    out = np.zeros((nrow * H, ncol * W, C), dtype=np.uint8)
    for i, img in enumerate(images_BHWC):
        r, c = divmod(i, ncol)
        out[r * H : (r + 1) * H, c * W : (c + 1) * W] = img
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path, help="a folder written by launchers/export.py")
    cond_arg = parser.add_mutually_exclusive_group(required=True)
    cond_arg.add_argument("--labels", type=int, nargs="+", help="class labels, one sample each")
    cond_arg.add_argument("--prompts-embeddings", type=Path, help="torch file of T5 embeddings (see above)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--ncol", type=int, default=8, help="images per grid row")
    parser.add_argument("--save-tensor", type=Path, default=None, help="also torch.save the raw samples here")
    args = parser.parse_args(argv)

    from PIL import Image

    from ard_scale.checkpoint.export import load_exported_student, sample_noise
    from ard_scale.models.condition import Condition

    try:
        student = load_exported_student(args.export_dir)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.labels is not None:
        cond = Condition(labels=torch.tensor(args.labels))
    else:
        emb = torch.load(args.prompts_embeddings, map_location="cpu", weights_only=True)
        emb = emb if isinstance(emb, dict) else {"text": emb}
        guidance = None if student.guidance is None else torch.full((len(emb["text"]),), student.guidance)
        cond = Condition(text=emb["text"], text_mask=emb.get("text_mask"), pooled=emb.get("pooled"), guidance=guidance)
    x = student.sample(sample_noise(student, cond.batch_size, args.seed), cond)  # KV-cached, S network passes
    if args.save_tensor is not None:
        torch.save(x, args.save_tensor)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(to_uint8(x), min(args.ncol, len(x)))).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
