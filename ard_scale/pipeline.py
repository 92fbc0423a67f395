"""A trained ARD student as a pipeline you call with a prompt (or class labels): export it, load it, sample.

    import torch
    from ard_scale.pipeline import ARDPipeline
    pipe = ARDPipeline.from_pretrained("runs/my_run/pipeline")
    images = pipe(["a red circle on white"], generator=torch.Generator().manual_seed(0)).images  # PIL images

`export_pipeline(run_dir, out_dir)` (launchers/export.py) writes a diffusers-style folder:

    model_index.json          the components, the S-step sampler's settings (guidance it was distilled at, steps)
    transformer/              the student: the teacher-class backbone + ard_heads + ard_config.json (export_student)
    scheduler/                the teacher's noise schedule as a diffusers scheduler config (for reference and tools)
    text_encoder/             T5 and its tokenizer (text-to-image families)
    pooled_text_encoder/      CLIP's text tower and tokenizer (families that read a pooled embedding, FLUX.1)
    pooled_text_encoder_2/    the second CLIP tower and tokenizer (families that read two, SD3's CLIP-G)
    qwen_text_encoder/        Qwen2.5-VL and its tokenizer (Qwen-Image)
    vae/                      the AutoencoderKL or AutoencoderKLQwenImage (latent-space teachers)
    recipe.yaml               the training recipe, its encoder and VAE paths pointing at the folders above
    ard_checksums.json        size and CRC-32 of every file outside transformer/ (which has its own), written last

Prompts are encoded by the trainer's own `Conditioner` built from `recipe.yaml`, the VAE is the trainer's codec and
the sampler is the student's KV-cached `sample`, so a pipeline's output equals the in-training sampler's for the
same noise and prompt. The encoders and VAE are copied (re-saved) or, with `link=True`, symlinked to the folders
the recipe named (weights given as named random sizes are always saved); linked folders are not checksummed.
`from_pretrained` checks every file against the checksums before reading any (`verify=False` skips it).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ard_scale.checkpoint.export import export_student, load_exported_student, resolve_tag
from ard_scale.checkpoint.export_files import (
    ARD_CONFIG_FILE,
    read_json,
    reading_export,
    verify_export,
    write_checksums,
)
from ard_scale.config import RootConfig, dump_yaml, load_config, to_dict
from ard_scale.config.loader import check_override_sections, read_yaml
from ard_scale.config.models import unnamed_encoders
from ard_scale.config.paths import recipe_encoding_mismatches
from ard_scale.data.text_encoding import read_text_encoding
from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError
from ard_scale.models.families import get_family
from ard_scale.models.folders import tokenizer_folder
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher
from ard_scale.models.vae import FrameLatentCodec, LatentCodec
from ard_scale.pipeline_args import (
    check_fixed,
    check_label_range,
    check_output_type,
    draw_noise,
    integer_labels,
    prompt_list,
    sides_text,
)
from ard_scale.trainer.build import build_codec_for, build_conditioner
from ard_scale.trainer.conditioning import SLOTS, Conditioner
from ard_scale.utils.folders import check_new_folder, check_room, tensor_bytes, writing_folder

MODEL_INDEX = "model_index.json"
# Conditioner slot -> pipeline subfolder (the recipe section is SLOTS[slot][0])
ENCODER_FOLDERS = {
    "t5": "text_encoder",
    "clip": "pooled_text_encoder",
    "clip_2": "pooled_text_encoder_2",  # SD3's CLIP-G
    "qwen": "qwen_text_encoder",  # Qwen-Image's Qwen2.5-VL
}
RECIPE = "recipe.yaml"
# recipe sections an export may set (`overrides`): where the encoders and VAE are, never what the student is
OVERRIDABLE = ("text_encoder", "pooled_encoder", "pooled_encoder_2", "qwen_encoder", "vae")
# the keys of those sections that say where the weights are; the others (max_length, scaling_factor, ...) are what
# the student was trained with
OVERRIDABLE_KEYS = ("path", "size")
FORMAT_VERSION = 1


def _linked(tokenizer, source: str | None, link: bool) -> bool:
    """Whether a component loaded from `source` is linked rather than saved. An encoder folder whose tokenizer is its
    pipeline sibling (text_encoder_2/ + tokenizer_2/) is saved: the link alone would leave the tokenizer behind (a
    pipeline folder given as `source` holds both subfolders)."""
    encoder_folder = source is not None and (Path(source) / "config.json").is_file()
    tokenizer_elsewhere = tokenizer is not None and encoder_folder and tokenizer_folder(source) != source
    return link and source is not None and not tokenizer_elsewhere


def _save_or_link(model, tokenizer, source: str | None, dest: Path, link: bool) -> None:
    if _linked(tokenizer, source, link):
        os.symlink(Path(source).resolve(), dest, target_is_directory=True)
        return
    model.save_pretrained(dest)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)


def _scheduler_config(cfg: RootConfig) -> tuple[str, dict]:
    """The recipe's schedule as a diffusers scheduler (class name, kwargs): what tools that read pipeline folders
    expect; ard_scale's sampler itself uses the schedule in transformer/ard_config.json."""
    d = cfg.diffusion
    if d.schedule == "flow":
        kwargs = {"num_train_timesteps": 1000, "shift": d.shift}
        if d.dynamic_shift:
            kwargs.update(
                use_dynamic_shifting=True, base_shift=d.base_shift, max_shift=d.max_shift,
                base_image_seq_len=d.base_seq_len, max_image_seq_len=d.max_seq_len,
            )  # fmt: skip
        return "FlowMatchEulerDiscreteScheduler", kwargs
    return "DDIMScheduler", {
        "num_train_timesteps": d.num_train_timesteps,
        "beta_start": d.beta_start,
        "beta_end": d.beta_end,
        "beta_schedule": "linear",
        "prediction_type": d.prediction_type,
        "clip_sample": False,
        "set_alpha_to_one": True,  # the schedule's clean endpoint ᾱ = 1, where the student's last step lands
    }


def export_pipeline(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    tag: str | None = None,
    use_ema: bool = True,
    link: bool = False,
    teacher: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Path:
    """Write checkpoint `tag` (default: latest) of `run_dir` as a pipeline folder (see the module docstring). A LoRA
    student is merged into a plain full student; `teacher`: its base teacher folder, if not its recipe's.
    `overrides`: dotted `key=value` settings of where the encoders and VAE are (the `path` or `size` of the
    OVERRIDABLE sections), e.g. the text encoders of a run trained on precomputed text, whose recipe needs to name
    none. A failed export leaves no folder behind
    (`writing_folder`)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    tag = resolve_tag(run_dir / "checkpoints", tag)
    recipe_file = run_dir / "checkpoints" / tag / "config.yaml"
    if not recipe_file.is_file():
        raise UserError(f"{recipe_file} is missing: a pipeline needs the recipe the checkpoint was trained with")
    check_override_sections(overrides, OVERRIDABLE, tool="export", why="the student is the checkpoint's")
    check_override_keys(overrides)
    cfg = load_config(recipe_file, list(overrides))
    check_new_folder(out_dir, "pipeline")
    check_prompt_encoders(cfg, run_dir)
    with writing_folder(out_dir, what="pipeline") as folder:  # no half-written folder to block the next try
        _write_pipeline(cfg, run_dir, folder, tag=tag, use_ema=use_ema, link=link, teacher=teacher)
    return out_dir


def launcher_command(cfg: RootConfig, run_dir: str | os.PathLike, tool: str = "export") -> str:
    """The command that runs launchers/`tool`.py (export, eval) on run `run_dir` of recipe `cfg`: with
    `SECTION.path=DIR` for each encoder the recipe does not name (a run on precomputed text: DIR is the encoder its
    shards were encoded with)."""
    encoders = "".join(f" {section}.path=DIR" for section in unnamed_encoders(cfg, get_family(cfg.teacher.family)))
    return f"python launchers/{tool}.py {run_dir}{encoders}"


def check_prompt_encoders(cfg: RootConfig, run_dir: Path, tool: str = "export") -> None:
    """The text encoders the pipeline (`tool` 'export') or the evaluation ('eval') encodes prompts with: refuse a
    recipe that names none of those its family reads (a run on precomputed text needs none), with the command that
    names them, and encoders other than those a run on precomputed text was trained with (the student would be given
    other embeddings than it learnt from). Those are compared, as the recipe check compares them, with the
    text_encoding.json of the run's shards (`data.path`; their size, token count and weights' fingerprint, not their
    path) where those shards are on this machine."""
    spec = get_family(cfg.teacher.family)
    who = "pipeline" if tool == "export" else "evaluation"
    unnamed = unnamed_encoders(cfg, spec)
    if unnamed:
        raise UserError(
            f"the recipe of {run_dir} names no {' and no '.join(unnamed)} encoder (it trained on precomputed text), "
            f"and the {who} encodes prompts: name them, e.g. {launcher_command(cfg, run_dir, tool)}"
        )
    path = cfg.data.path
    if spec.condition_kind != "text" or not cfg.text_encoder.use_precomputed or path is None or not Path(path).is_dir():
        return
    record = read_text_encoding(path)
    differing = [] if record is None else recipe_encoding_mismatches(cfg, spec, record)
    if differing:
        section = next((s for s in OVERRIDABLE if differing[0].startswith(f"{s}.")), "text_encoder")
        raise UserError(
            f"the {who}'s text encoders are not those {run_dir} was trained with: its shards ({path}) were encoded "
            f"otherwise ({'; '.join(differing)}); give the encoders they were encoded with (their text_encoding.json "
            f"names them), e.g. python launchers/{tool}.py {run_dir} {section}.path=DIR"
        )


def check_override_keys(overrides: Sequence[str], tool: str = "export") -> None:
    """Refuse `tool`'s overrides of an encoder or VAE section's keys other than `path` and `size`: its token count
    (max_length) and latent scaling are the ones the student was trained with, from the checkpoint's recipe."""
    others = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[-1] not in OVERRIDABLE_KEYS]
    if others:
        raise UserError(
            f"{tool} overrides may set only where the encoders and VAE are (SECTION.path or SECTION.size), got "
            f"{others}: their other settings (max_length, scaling_factor, shift_factor, ...) are the ones the student "
            "was trained with, taken from the checkpoint's recipe; leave them out"
        )


def _write_pipeline(cfg: RootConfig, run_dir: Path, out_dir: Path, *, tag: str, use_ema: bool, link: bool, teacher):
    import diffusers

    student_dir = export_student(run_dir, out_dir / "transformer", tag=tag, use_ema=use_ema, teacher=teacher)
    student = load_exported_student(student_dir, verify=False)  # just written
    teacher = Teacher(student.backbone)

    # what the student holds: 'raw' where the checkpoint has no EMA, whatever `use_ema` asked for
    weights = read_json(student_dir / ARD_CONFIG_FILE)["source"]["weights"]
    recipe = to_dict(cfg)
    components = {"transformer": ["ard_scale", "ARDStudent"]}
    conditioner = build_conditioner(cfg, teacher, for_eval=True)
    codec = build_codec_for(cfg, teacher)
    parts = []  # (folder, model, tokenizer, source): the encoders and the VAE
    for slot, encoder in conditioner.encoders.items():
        section, folder = SLOTS[slot][0], ENCODER_FOLDERS[slot]
        parts.append((folder, encoder.model, encoder.tokenizer, getattr(cfg, section).path))
        recipe[section].update(path=folder, size=None)
        components[folder] = ["transformers", type(encoder.model).__name__]
    recipe["text_encoder"]["use_precomputed"] = False
    if isinstance(codec, (LatentCodec, FrameLatentCodec)):
        parts.append(("vae", codec.vae, None, None if cfg.vae.path is None else _vae_source(cfg.vae.path)))
        recipe["vae"].update(path="vae", size=None)
        components["vae"] = ["diffusers", type(codec.vae).__name__]
    saved = [model for _, model, tokenizer, source in parts if not _linked(tokenizer, source, link)]
    check_room(out_dir, sum(tensor_bytes(m.state_dict().values()) for m in saved), "pipeline's encoders and VAE")
    for folder, model, tokenizer, source in parts:
        _save_or_link(model, tokenizer, source, out_dir / folder, link)
    recipe["teacher"].update(path="transformer", size=None)

    scheduler_class, scheduler_kwargs = _scheduler_config(cfg)
    getattr(diffusers, scheduler_class)(**scheduler_kwargs).save_pretrained(out_dir / "scheduler")
    components["scheduler"] = ["diffusers", scheduler_class]
    dump_yaml(
        recipe, out_dir / RECIPE, header=f"the recipe of {run_dir}/checkpoints/{tag}, paths relative to this folder"
    )
    index = {
        "_class_name": "ARDPipeline",
        "_ard_format_version": FORMAT_VERSION,
        **components,
        "ard": {
            "family": teacher.family,
            "num_inference_steps": student.num_steps,
            "guidance_scale": cfg.diffusion.guidance_scale,  # the teacher's guidance the student was distilled at
            "guidance": teacher.spec.guidance,  # 'cfg': baked into the student; 'embedded': its conditions carry it
            "resolution": cfg.data.resolution,
            "latent_shape": list(student.latent_shape) if student.latent_shape else None,
            "source": {"run_dir": str(run_dir.resolve()), "tag": tag, "weights": weights},
        },
    }
    (out_dir / MODEL_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    write_checksums(out_dir, skip=("transformer",))  # last: transformer/ has its own, written by export_student


def _vae_source(path: str) -> str:
    p = Path(path)
    return str(p / "vae") if (p / "vae" / "config.json").is_file() else str(p)


def _component_paths(folder: Path) -> list[str]:
    """Overrides pointing the recipe of pipeline `folder` at its components: the relative encoder and VAE paths the
    export wrote are relative to the folder, never to the current directory (whose own `text_encoder/` would
    otherwise be read instead of a missing one); a missing component folder is refused naming the pipeline."""
    recipe = read_yaml(folder / RECIPE)
    overrides = [f"teacher.path={folder / 'transformer'}"]
    for key in [SLOTS[slot][0] for slot in ENCODER_FOLDERS] + ["vae"]:
        path = (recipe.get(key) or {}).get("path")
        if not isinstance(path, str) or Path(path).is_absolute():
            continue
        if not (folder / path).exists():
            raise UserError(
                f"{folder} is an incomplete ARD pipeline folder: its {RECIPE} reads the {key} section's weights from "
                f"{path}/ inside it, and {folder / path} is missing; copy the whole folder, or export it again "
                "(launchers/export.py RUN_DIR --out FOLDER)"
            )
        overrides.append(f"{key}.path={folder / path}")
    return overrides


@dataclass
class ARDPipelineOutput:
    images: list | np.ndarray | torch.Tensor  # PIL images; (B, H, W, 3) in [0, 1] ("np"); (B, 3, H, W) in [0, 1] ("pt")
    latents: torch.Tensor  # the student's final states (B, C, h, w)


class ARDPipeline:
    """The exported student's S-step sampler with its text encoders and VAE (see the module docstring)."""

    def __init__(self, student: ARDStudent, conditioner: Conditioner, codec, cfg: RootConfig, index: dict):
        self.student, self.conditioner, self.codec, self.cfg, self.index = student, conditioner, codec, cfg, index
        self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, dtype: torch.dtype = torch.float32, verify: bool = True
    ) -> ARDPipeline:
        """Load a pipeline folder written by `export_pipeline`. `verify`: check every file against the folder's
        checksums before reading any (one extra read of the folder; a mismatch is an error naming the file)."""
        folder = Path(folder)
        index_file = folder / MODEL_INDEX
        if not index_file.is_file() or not (folder / RECIPE).is_file():
            raise UserError(
                f"{folder} is not an ARD pipeline folder (no {MODEL_INDEX} or {RECIPE}); write one with "
                "launchers/export.py RUN_DIR --out FOLDER"
            )
        if verify:
            verify_export(folder)
        cfg = load_config(folder / RECIPE, _component_paths(folder))
        with reading_export(folder):  # a missing or truncated weight file, an unparsable config
            index = read_json(index_file)
            student = load_exported_student(folder / "transformer", dtype=dtype, verify=verify)
            teacher = Teacher(student.backbone)
            conditioner, codec = build_conditioner(cfg, teacher, for_eval=True), build_codec_for(cfg, teacher)
        return cls(student, conditioner, codec, cfg, index)

    def to(self, device: str | torch.device) -> ARDPipeline:
        self.device = torch.device(device)
        self.student.to(self.device)
        self.codec.to(self.device)
        self.conditioner.to(self.device)
        return self

    def _distilled_side(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents the student was distilled at."""
        side = getattr(self.student.backbone.config, "sample_size", None)  # exports older than `sampling`
        return tuple(self.student.latent_shape or (self.student.in_channels, side, side))

    def _latent_shape(self, height: int | None, width: int | None, asked: str = "") -> tuple[int, int, int]:
        """(C, h, w) of the noise for a height×width image (None: the size the student was distilled at). A size
        the family cannot take is refused naming the sizes it can; one other than the distilled size warns. `asked`:
        what asked for the size, for the message (default: height and width)."""
        C, h, w = self._distilled_side()
        down = getattr(self.codec, "downsample", 1)
        if height is None and width is None:
            return C, h, w
        distilled = f"this student was distilled at {h * down}×{w * down} px"
        for name, side in (("height", height), ("width", width)):
            if side is not None and (side <= 0 or side % down):
                raise UserError(
                    f"{name}={side}: must be a positive multiple of the VAE's downsampling ({down} px); {distilled}"
                )
        new_h = h if height is None else height // down
        new_w = w if width is None else width // down
        try:
            self.student.family.check_latent_size(self.student.backbone, new_h, new_w)
        except ValueError:  # the family says it in terms of the recipe (data.resolution): say it in terms of the call
            hint = "give latents of that size" if asked else "leave height and width out for that size"
            raise UserError(
                f"{asked or f'height={new_h * down}, width={new_w * down}'}: this {self.student.family.name} student "
                f"samples {sides_text(self.student.family, self.student.backbone, down)}; {distilled} ({hint})"
            ) from None
        trained = [(h, w), *(self.student.latent_sizes or [])]
        if (new_h, new_w) not in trained:
            buckets = " and its aspect-ratio buckets" if self.student.latent_sizes else ""
            warnings.warn(
                f"{distilled}{buckets}; at {new_h * down}×{new_w * down} px it samples a size it was not trained at, "
                "and its images may be worse (leave height and width out for the distilled size)",
                UserWarning,
                stacklevel=4,  # the caller of __call__ (through torch.no_grad's wrapper)
            )
        return C, new_h, new_w

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
    ) -> ARDPipelineOutput:
        """Images for `prompt` (text families) or `class_labels` (class-conditional ones): the student's S network
        passes from noise drawn on the CPU with `generator` (or the given `latents`), decoded with the VAE.

        num_images_per_prompt: images per prompt (or label), each repeated in place (prompt 0's images first), each
            from its own noise. generator: one torch.Generator (CPU) for all the noise, or a list of them, one per
            image (as diffusers). latents: the noise itself, (number of images, C, h, w); its batch must equal the
            number of images (prompts × num_images_per_prompt: a single prompt is not broadcast over several latents,
            ask for num_images_per_prompt instead), and height/width, if given too, must be its size; it is taken in
            fp32 (the states between steps are fp32 whatever the pipeline's dtype, as in training).
        height, width: the image size (default: the size the student was distilled at); another size its family
            takes (FLUX, SD3, Qwen-Image; PixArt at other aspect ratios) warns, one it cannot take is refused naming
            those it can.
        output_type: 'pil' (list of PIL images), 'np' ((B, H, W, 3) float32 in [0, 1], as diffusers), 'pt'
            ((B, 3, H, W) in [0, 1]) or 'latent' (no decoding); another is refused before sampling.
        num_inference_steps, guidance_scale, negative_prompt: fixed at distillation (model_index.json's "ard"
            section): the student takes its own step count and the guidance it was distilled at (no CFG pass, so no
            negative prompt); the same values are accepted, others refused."""
        steps, guidance = self.student.num_steps, self.cfg.diffusion.guidance_scale  # model_index.json's "ard"
        check_fixed(steps, guidance, num_inference_steps, guidance_scale, negative_prompt)
        check_output_type(output_type)
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise TypeError(f"num_images_per_prompt must be an int ≥ 1, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise UserError(f"num_images_per_prompt must be ≥ 1, got {num_images_per_prompt}")
        cond = self._condition(prompt, class_labels, num_images_per_prompt)
        n = cond.batch_size
        if latents is None:
            latents = draw_noise(n, self._latent_shape(height, width), generator)
        else:
            self._check_latents(latents, n, num_images_per_prompt, height, width, generator)
        # fp32 states, as the in-training sampler keeps them (bf16/fp16 noise would run every DDIM/Euler step in it)
        x = self.student.sample(latents.to(self.device, torch.float32), cond.to(self.device))
        if output_type == "latent":
            return ARDPipelineOutput(images=x, latents=x)
        images = (self.codec.decode(x).float().clamp(-1, 1) + 1) / 2
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        if output_type == "pt":
            return ARDPipelineOutput(images=images.cpu(), latents=x)
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return ARDPipelineOutput(images=arrays, latents=x)
        from PIL import Image

        arrays = (arrays * 255).round().astype(np.uint8)
        return ARDPipelineOutput(images=[Image.fromarray(a) for a in arrays], latents=x)

    def _check_latents(self, latents, n: int, per_prompt: int, height, width, generator) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise TypeError(f"latents must be a (number of images, C, h, w) torch.Tensor, got {got}")
        if generator is not None:
            warnings.warn("generator is ignored: the latents given are the noise", UserWarning, stacklevel=4)
        if latents.shape[0] != n:
            prompts, images = n // per_prompt, f"{n} image{'s' * (n != 1)}"
            asks = f"{prompts} prompt{'s' * (prompts != 1)} or label{'s' * (prompts != 1)}"
            asks += f" × num_images_per_prompt={per_prompt}" if per_prompt > 1 else ""
            raise UserError(
                f"latents hold {latents.shape[0]} noise tensors, but the call asks for {images} ({asks}); give one per "
                "image (several images of one prompt: num_images_per_prompt=K with K latents; a single prompt is not "
                "repeated to fill the latents)"
            )
        down = getattr(self.codec, "downsample", 1)
        size = (latents.shape[2] * down, latents.shape[3] * down)
        for name, side, given in (("height", height, size[0]), ("width", width, size[1])):
            if side is not None and side != given:
                raise UserError(
                    f"{name}={side} conflicts with latents of shape {tuple(latents.shape)} ({given} px at the VAE's "
                    f"{down} px per latent): leave height and width out when giving latents"
                )
        C = self._distilled_side()[0]
        if latents.shape[1] != C:
            raise UserError(f"latents have {latents.shape[1]} channels; this student's have {C}")
        self._latent_shape(*size, asked=f"latents of shape {tuple(latents.shape)} ({size[0]}×{size[1]} px)")

    def _condition(self, prompt, class_labels, per_prompt: int = 1) -> Condition:
        kind = self.conditioner.kind
        if kind == "labels":
            if class_labels is None or prompt is not None:
                raise UserError("this student is class-conditional: pass class_labels=[...] (no prompt)")
            labels = integer_labels(class_labels)
            check_label_range(labels, self.student.family.num_classes(self.student.backbone))
            return Condition(labels=labels.repeat_interleave(per_prompt))
        if prompt is None or class_labels is not None:
            raise UserError("this student is text-conditional: pass prompt='...' or a list of prompts (no labels)")
        prompts = prompt_list(prompt)
        return self.conditioner.encode([p for p in prompts for _ in range(per_prompt)])
