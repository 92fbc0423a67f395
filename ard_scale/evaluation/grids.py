"""Sample grids: the teacher (its full sampler) next to the student (S steps) on the same fixed noise and conditions,
so a reader compares image by image. Row 0 is the teacher, row 1 the student; column i is sample i."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ard_scale.diffusion.trajectory import draw_noise
from ard_scale.errors import UserError

# sampler(noise (B, C, H, W)) -> images in [-1, 1] (B, 1 or 3, H', W'); the condition is bound by the caller
Sampler = Callable[[torch.Tensor], torch.Tensor]


def fixed_noise(num: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """(num, C, H, W) standard normal noise, sample i drawn from seed + i (`draw_noise`: every bit of an evaluation
    seed counts): the same on every evaluation and rank."""
    return draw_noise(range(seed, seed + num), shape)


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, 1 or 3, H, W) -> uint8 (B, H, W, 3)."""
    if images.shape[1] not in (1, 3):
        raise UserError(f"grid images need 1 or 3 channels (decoded pixels), got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


def comparison_grid(rows: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """uint8 (rows·H + pad, B·W + pad, 3) image of equally shaped [-1, 1] batches, one batch per row."""
    imgs = [to_uint8_hwc(r) for r in rows]
    if len({i.shape for i in imgs}) != 1:
        raise UserError(f"grid rows differ in shape: {[i.shape for i in imgs]}")
    b, h, w, _ = imgs[0].shape
    out = np.full((len(imgs) * (h + pad) + pad, b * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(imgs):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y : y + h, x : x + w] = img
    return out


@torch.no_grad()
def write_teacher_student_grid(
    path: str | os.PathLike, teacher: Sampler, student: Sampler, noise: torch.Tensor
) -> np.ndarray:
    """Run both samplers on the same `noise`, write the two-row PNG to `path`, return the grid."""
    grid = comparison_grid([teacher(noise.clone()), student(noise.clone())])
    save_png(path, grid)
    return grid


def labelled_grid(
    rows: list[np.ndarray],
    column_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    *,
    tile: int = 128,
    gap: int = 4,
) -> np.ndarray:
    """uint8 (H', W', 3) image a person can read: rows of equally shaped uint8 (B, H, W, 3) images, each tile
    upscaled (nearest) to at least `tile` px, `gap` px of white between tiles, a label under each column's tiles
    (prompt or class) and a label above each row ("teacher: 24 calls")."""
    from PIL import Image, ImageDraw

    B, H, W, _ = rows[0].shape
    if any(r.shape != rows[0].shape for r in rows):
        raise UserError(f"grid rows differ in shape: {[r.shape for r in rows]}")
    scale = max(1, -(-tile // max(H, W)))
    h, w, text = H * scale, W * scale, 14
    top = text if row_labels else 0
    bottom = text if column_labels else 0
    canvas = Image.new("RGB", (B * (w + gap) + gap, len(rows) * (top + h + bottom + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    chars = max(4, w // 6)
    for r, row in enumerate(rows):
        y = gap + r * (top + h + bottom + gap)
        if row_labels:
            draw.text((gap, y), row_labels[r], fill="black")
        for c, img in enumerate(row):
            x = gap + c * (w + gap)
            canvas.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (x, y + top))
            if column_labels:
                label = column_labels[c] if len(column_labels[c]) <= chars else column_labels[c][: chars - 1] + "…"
                draw.text((x, y + top + h + 1), label, fill="black")
    return np.asarray(canvas)


def save_png(path: str | os.PathLike, image_HW3: np.ndarray) -> None:
    """Write a uint8 image atomically (a reader sees the old file or the whole new one)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.{os.getpid()}.png")
    Image.fromarray(image_HW3).save(tmp)
    os.replace(tmp, path)
