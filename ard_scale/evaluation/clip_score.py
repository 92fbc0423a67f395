"""CLIP score (Hessel et al. 2021, without their w = 2.5): 100 · max(cos(E_I(image), E_T(caption)), 0), averaged
over samples — torchmetrics' and most papers' definition. The model is open_clip's, loaded from local files only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ard_scale.errors import UserError


def load_open_clip(model_name: str | None, path: str | os.PathLike) -> tuple[torch.nn.Module, Callable]:
    """(model, tokenizer) from local files: `path` is a checkpoint file for architecture `model_name`
    (`open_clip.create_model(model_name, pretrained=path)`), or a folder holding `open_clip_config.json` and the
    weights (open_clip's `local-dir:` layout; `model_name` may then be None)."""
    import open_clip

    path = Path(path)
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise UserError(f"CLIP model folder {str(path)!r} (eval.clip_path) has no open_clip_config.json")
        if not any(path.glob(f"*.{ext}") for ext in ("safetensors", "bin", "pth")):
            raise UserError(
                f"CLIP model folder {str(path)!r} (eval.clip_path) holds no weights file (open_clip_pytorch_model.bin "
                "or open_clip_model.safetensors); open_clip would silently use random weights"
            )
        name = f"local-dir:{path}"
        model = open_clip.create_model(name)
    elif path.is_file():
        if model_name is None:
            raise UserError(f"CLIP checkpoint {str(path)!r} is a file: name its open_clip architecture too")
        if model_name not in open_clip.list_models():
            raise UserError(f"unknown open_clip model {model_name!r}; known: {', '.join(open_clip.list_models())}")
        name = model_name
        model = open_clip.create_model(model_name, pretrained=str(path))
    else:
        raise UserError(f"CLIP weights not found at {str(path)!r} (eval.clip_path); nothing is downloaded")
    return model.eval(), open_clip.get_tokenizer(name)


class CLIPScore:
    """Per-sample CLIP scores of (image, caption) pairs; `compute(gather)` averages over all ranks' samples."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable) -> None:
        from open_clip.model import get_model_preprocess_cfg

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        cfg = get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        # open_clip resizes with bilinear where the model's preprocess config says so (MobileCLIP, CLIPA, PE), else
        # bicubic (its image_transform maps every other value, 'random' included, to bicubic at inference)
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.scores: list[torch.Tensor] = []

    @classmethod
    def from_pretrained(cls, model_name: str | None, path: str | os.PathLike) -> CLIPScore:
        return cls(*load_open_clip(model_name, path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] (B, 3, H, W) -> the model's input: shorter side resized (bicubic, or bilinear where the
        model's preprocess config says so), centre crop, normalised, as open_clip's own image transform does for PIL
        images."""
        x = images.float().to(self.device)
        h, w = x.shape[-2:]
        th, tw = self.size
        scale = max(th / h, tw / w)
        if (h, w) != (th, tw):
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode=self.interpolation, align_corners=False, antialias=True)
            x = x.clamp(0, 1)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[..., top : top + th, left : left + tw]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """(B,) scores 100 · max(cos, 0) of float [0, 1] images (B, 3, H, W) against their captions."""
        if len(captions) != images.shape[0]:
            raise UserError(f"{images.shape[0]} images but {len(captions)} captions")
        image_BE = self.model.encode_image(self.preprocess(images), normalize=True)
        text_BE = self.model.encode_text(self.tokenizer(list(captions)).to(self.device), normalize=True)
        return 100 * (image_BE * text_BE).sum(-1).float().clamp(min=0)

    def update(self, images: torch.Tensor, captions: Sequence[str]) -> None:
        self.scores.append(self.score(images, captions).double().cpu())

    def reset(self) -> None:
        self.scores = []

    def compute(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Mean score over this rank's samples, or over every rank's with `gather` (all_gather + concatenate along
        dim 0; the gathered tensor is one fixed-size (1, 2) row per rank, so ranks may hold different counts)."""
        local = torch.cat(self.scores) if self.scores else torch.zeros(0, dtype=torch.float64)
        sum_count_12 = torch.tensor([[float(local.sum()), float(local.numel())]], dtype=torch.float64)
        if gather is not None:
            sum_count_12 = gather(sum_count_12.to(self.device)).cpu().sum(0, keepdim=True)
        total, count = sum_count_12[0].tolist()
        if count == 0:
            raise RuntimeError("CLIP score has no samples")
        return total / count
