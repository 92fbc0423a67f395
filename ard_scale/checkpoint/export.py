"""Export a checkpointed ARD student to a diffusers-format folder, and load it back without DeepSpeed.

An export folder holds:
- `config.json` + `diffusion_pytorch_model.safetensors`: the student's backbone *as the teacher's own diffusers
  class*, with head 0 put back as the final layer (loads with `ard_scale.models.teachers.load_teacher` or the
  diffusers class's `from_pretrained`);
- `ard_heads.safetensors`: every student head (`heads.{s}.…`; head 0 repeated for completeness);
- `ard_config.json`: family, ARD settings (S, N, mask, heads, output), the schedule, `sampling` (the latent
  shape (C, H, W) it was trained on, the (H, W) of its aspect-ratio buckets where it was trained on those, and the
  embedded guidance value of a guidance-distilled teacher, null for others), and where the weights came from (run,
  tag, `ema` or `raw`);
- `ard_checksums.json`, written last: the size and CRC-32 of every file above (`write_checksums`). Loading checks it
  first (`verify_export`), so a flipped byte, a truncated copy or a file missing from a moved folder is an error
  naming the file, not different weights or a reader's crash.

A LoRA student (student.lora.rank > 0) exports either merged — the folder above, its adapters merged into the
backbone, a plain full student (`ard.lora.rank` 0, the adapter settings under `source.lora`) — or, with
`adapter_only`, as its trainable state alone: `pytorch_lora_weights.safetensors` (diffusers' LoRA layout,
`transformer.<module>.lora_A.weight`, with the adapter config in its `lora_adapter_metadata`, as
`load_lora_adapter(folder, weight_name=LORA_FILE, prefix="transformer")` reads it), `ard_heads.safetensors`,
`ard_trained.safetensors` (any `train_also` parameters) and `ard_config.json` naming the base teacher (`base`: the
recipe's teacher section).
A LoRA checkpoint holds no base weights: exporting it rebuilds its recipe's teacher (or the `teacher` given).

Weights: the EMA when the checkpoint has one — `client_state["ema_full"]` (a full state dict keyed like the
student's `state_dict()`), or else the per-rank `rank_state["ema"]` written by `ZeroEMA.state_dict()`, whose shards
are reassembled here — otherwise (or with `use_ema=False`) the raw weights rebuilt by DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint`.
"""

from __future__ import annotations

import glob
import json
import math
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ard_scale.checkpoint.export_files import (
    ARD_CONFIG_FILE,
    read_json,
    reading_export,
    verify_export,
    write_checksums,
)
from ard_scale.checkpoint.layout import LATEST, rank_file, step_of
from ard_scale.checkpoint.safe_load import CONFIG, META, complete_tags, read_meta, safe_load, verify_dir
from ard_scale.checkpoint.student_meta import lora_layout, schedule_from_dict, student_architecture
from ard_scale.config import to_dict
from ard_scale.config.ard import ARDConfig
from ard_scale.errors import UserError
from ard_scale.models.families import get_family
from ard_scale.models.lora import adapter_config, adapter_state, merged_backbone_state
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher, load_teacher, teacher_from_config
from ard_scale.utils.folders import check_new_folder, tensor_bytes, writing_folder

HEADS_FILE = "ard_heads.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
TRAINED_FILE = "ard_trained.safetensors"
LORA_PREFIX = "transformer"  # the key prefix diffusers' pipelines give a transformer's LoRA weights


def resolve_tag(ckpt_dir: Path, tag: str | None) -> str:
    """`tag`, or the one `latest` names; refused unless its folder exists (naming the checkpoints there)."""
    if tag is None:
        latest = ckpt_dir / LATEST
        if not latest.is_file():
            raise UserError(f"{latest} does not exist: no complete checkpoint to export (pass a run directory)")
        tag = latest.read_text(encoding="utf-8").strip()
        named = f"{latest} names {tag!r}, but"
    else:
        named = f"checkpoint tag {tag!r}:"
    if not (ckpt_dir / tag).is_dir():
        there = complete_tags(ckpt_dir)
        raise UserError(
            f"{named} {ckpt_dir / tag} does not exist; checkpoints there: {', '.join(there) or 'none'} "
            "(choose one with --tag)"
        )
    return tag


def _client_state(tag_dir: Path) -> dict:
    """Rank 0's DeepSpeed model-states file (it carries the client_state)."""
    files = sorted(glob.glob(str(tag_dir / "*model_states.pt")))
    if not files:
        raise UserError(f"{tag_dir} has no DeepSpeed *model_states.pt file")
    return safe_load(files[0])


def full_ema_state_dict(run_dir: str | Path, tag: str, shapes: dict[str, torch.Size]) -> dict | None:
    """The EMA of checkpoint `tag` as a full fp32 dict (names of the student's parameters), or None if it has none.

    `shapes`: the full shape of every parameter (e.g. from the raw fp32 state dict), to reassemble ZeRO-3 shards.
    Usable by the trainer too, after a universal (new world size) resume: `ZeroEMA.load_full_state_dict(...)`."""
    tag_dir = Path(run_dir) / "checkpoints" / tag
    ema_full = _client_state(tag_dir).get("ema_full")
    if ema_full is not None:
        return {k: v.float() for k, v in ema_full.items()}
    world = read_meta(tag_dir)["world_size"]
    states = [safe_load(rank_file(tag_dir, r)) for r in range(world)]
    emas = [s.get("ema") if isinstance(s, dict) else None for s in states]
    if any(e is None for e in emas):
        return None
    if not emas[0].get("zero3"):
        return {k: v.float() for k, v in emas[0]["shadow"].items()}
    out = {}
    for name, shape in shapes.items():
        if name not in emas[0]["shadow"]:
            continue
        flat = torch.cat([e["shadow"][name].reshape(-1) for e in emas])
        out[name] = flat[: math.prod(shape)].view(shape).float().clone()
    return out


def _teacher_class_state(student_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone weights with head 0 as the final layer, keyed like the teacher's diffusers class. The student's
    head modules keep the teacher's attribute names (DiT: proj_out_1/2; PixArt: scale_shift_table, proj_out)."""
    out = {k.removeprefix("backbone."): v for k, v in student_sd.items() if k.startswith("backbone.")}
    out.update({k.removeprefix("heads.0."): v for k, v in student_sd.items() if k.startswith("heads.0.")})
    return out


EXPORT_EARLIER = "export one of them instead: python launchers/export.py {run_dir} --tag {tag}"


def student_state_dict(
    run_dir: str | Path, *, tag: str | None = None, use_ema: bool = True, earlier_fix: str = EXPORT_EARLIER
) -> tuple[dict[str, torch.Tensor], dict, str, str]:
    """The student of checkpoint `tag` (default: latest) of `run_dir` as a full fp32 state dict (EMA merged in when
    `use_ema` and present). Returns (state, architecture from the checkpoint's meta, tag, 'ema' or 'raw' ...).
    A damaged checkpoint is an error naming the complete earlier ones and `earlier_fix` (formatted with `run_dir`
    and the newest earlier `tag`): how the caller takes one of them."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    tag = resolve_tag(ckpt_dir, tag)
    if not (ckpt_dir / tag / META).is_file():
        raise UserError(f"{ckpt_dir / tag} is not a complete checkpoint (no {META})")
    # Sizes and checksums first, then no planted objects (DeepSpeed's reader unpickles with weights_only=False). A
    # checkpoint named here is never swapped for another: a damaged one is an error.
    try:
        verify_dir(ckpt_dir / tag)
    except ValueError as e:
        earlier = [t for t in complete_tags(ckpt_dir) if step_of(t) < (step_of(tag) or 0)]
        if not earlier:
            raise
        raise UserError(
            f"{e}. Complete earlier checkpoints there (each verified as it is read): {', '.join(earlier)}; "
            + earlier_fix.format(run_dir=run_dir, tag=earlier[-1])
            + " (resuming the run falls back to the newest intact one by itself)"
        ) from e
    arch = read_meta(ckpt_dir / tag).get("student")
    if arch is None:
        raise UserError(f"{ckpt_dir / tag} does not hold an ARD student (its {META} has no student architecture)")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    weights = "raw"
    if use_ema:
        ema = full_ema_state_dict(run_dir, tag, {k: v.shape for k, v in state.items()})
        if ema is None:
            warnings.warn(f"{ckpt_dir / tag} has no EMA; using the raw weights", stacklevel=2)
        else:
            missing = sorted(set(state) - set(ema))  # buffers, frozen parameters: not averaged
            state = {k: (ema[k] if k in ema else state[k]) for k in state}
            weights = "ema" if not missing else f"ema (raw for {len(missing)} non-averaged tensors)"
    return state, arch, tag, weights


def _student_of(teacher: Teacher, arch: dict, ard: dict | None = None) -> ARDStudent:
    sampling = arch.get("sampling") or {}
    return ARDStudent(
        teacher,
        ARDConfig(**(ard if ard is not None else arch["ard"])),
        schedule_from_dict(arch["schedule"]),
        latent_shape=sampling.get("latent_shape"),
        guidance=sampling.get("guidance"),
        latent_sizes=sampling.get("latent_sizes"),
    )


def _recipe_teacher(tag_dir: Path):
    """The `teacher` section and seed of the recipe a checkpoint was written with."""
    from ard_scale.config import load_config

    cfg = load_config(tag_dir / CONFIG)
    return cfg.teacher, cfg.train.seed


def lora_checkpoint_student(
    run_dir: Path, tag: str, arch: dict, state: dict, *, teacher: str | Path | None = None
) -> ARDStudent:
    """A LoRA checkpoint's student: the base weights of its recipe's teacher (or of the teacher folder given) and the
    checkpoint's trainable state (adapters, heads, train_also parameters)."""
    tag_dir = Path(run_dir) / "checkpoints" / tag
    section, seed = _recipe_teacher(tag_dir)
    try:
        base = (
            load_teacher(teacher, family=arch["family"]) if teacher is not None else teacher_from_config(section, seed)
        )
    except (ValueError, OSError) as e:
        raise UserError(
            f"{tag_dir} holds a LoRA student, whose checkpoint has no base weights: they are the teacher's "
            f"(its recipe's teacher.path={section.path!r}), which could not be loaded ({e}). Pass the teacher's "
            "folder (launchers/export.py --teacher DIR)"
        ) from e
    student = _student_of(base, arch)
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"the trainable state in {tag_dir} does not fit that teacher's LoRA student: {e}") from e
    return student


def write_adapters(student: ARDStudent, out_dir: Path) -> None:
    """A LoRA student's adapters in diffusers' layout (LORA_FILE, with its `lora_adapter_metadata`) and any
    `train_also` parameters (TRAINED_FILE); the heads and ard_config.json are written by the caller."""
    adapters = {f"{LORA_PREFIX}.{k}": v for k, v in adapter_state(student.backbone).items()}
    metadata = {f"{LORA_PREFIX}.{k}": v for k, v in adapter_config(student.backbone).items()}
    header = {"format": "pt", "lora_adapter_metadata": json.dumps(metadata, sort_keys=True)}
    save_file(adapters, str(out_dir / LORA_FILE), metadata=header)
    trained = {
        k: v.detach().contiguous().clone()
        for k, v in student.state_dict().items()  # trainable state only
        if k.startswith("backbone.") and ".lora_" not in k
    }
    if trained:
        save_file(trained, str(out_dir / TRAINED_FILE))


def export_student(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    tag: str | None = None,
    use_ema: bool = True,
    adapter_only: bool = False,
    teacher: str | Path | None = None,
    replace: bool = False,
) -> Path:
    """Write checkpoint `tag` (default: latest) of `run_dir` as an export folder (see the module docstring), whole
    or not at all: `out_dir` must be new or empty, unless `replace` (swap an existing folder for the new one).
    `adapter_only` (LoRA students): the trainable state and a reference to the base teacher instead of a full
    backbone. `teacher`: a LoRA student's base teacher folder, if not its recipe's."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not replace:
        check_new_folder(out_dir, "student")
    state, arch, tag, weights = student_state_dict(run_dir, tag=tag, use_ema=use_ema)
    lora = ARDConfig(**arch["ard"]).lora
    if adapter_only and not lora.enabled:
        raise UserError(
            f"{run_dir}/checkpoints/{tag} holds a full student (no student.lora): export it without "
            "adapter_only (--lora-adapter)"
        )
    if teacher is not None and not lora.enabled:
        warnings.warn(
            f"teacher={teacher} is ignored: {run_dir}/checkpoints/{tag} holds a full student, with its own backbone "
            "weights (a base teacher is for LoRA students; leave --teacher out)",
            UserWarning,
            stacklevel=2,
        )
    source = {"run_dir": str(run_dir.resolve()), "tag": tag, "weights": weights}
    ard = arch["ard"]
    need = tensor_bytes(state.values())  # an adapter export: the trainable state; a full one: the merged student
    if lora.enabled:
        student = lora_checkpoint_student(run_dir, tag, arch, state, teacher=teacher)
        merged = {f"backbone.{k}": v for k, v in merged_backbone_state(student.backbone).items()}
        state = {**merged, **{k: v for k, v in state.items() if not k.startswith("backbone.")}}  # + the heads
        source["lora"] = to_dict(lora)
        if not adapter_only:
            ard = {**arch["ard"], "lora": {"rank": 0}}  # merged: a plain full student
            need = tensor_bytes(state.values())
    with writing_folder(out_dir, what="student", replace=replace, need_bytes=need) as folder:
        if adapter_only:
            section, seed = _recipe_teacher(run_dir / "checkpoints" / tag)
            source["base"] = {**to_dict(section), "seed": seed} if teacher is None else {"path": str(teacher)}
            write_adapters(student, folder)
        else:
            model_cls = get_family(arch["family"]).model_class
            backbone = model_cls.from_config(arch["backbone_config"])
            backbone.load_state_dict(_teacher_class_state(state), strict=True)
            backbone.save_pretrained(folder, safe_serialization=True)
        heads = {k: v.detach().contiguous().clone() for k, v in state.items() if k.startswith("heads.")}
        save_file(heads, str(folder / HEADS_FILE))
        ard_config = {
            "format_version": 1,
            "family": arch["family"],
            "ard": ard,
            "schedule": arch["schedule"],
            "sampling": arch.get("sampling") or {"latent_shape": None, "guidance": None},
            "source": source,
        }
        (folder / ARD_CONFIG_FILE).write_text(json.dumps(ard_config, indent=1), encoding="utf-8")
        write_checksums(folder)
    return out_dir


def load_exported_student(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    teacher: str | Path | None = None,
    verify: bool = True,
) -> ARDStudent:
    """An `ARDStudent` (eval mode, CPU) from an export folder; sample with `student.sample(noise, cond)`. An
    adapter-only export is applied to its base teacher: the one its ard_config.json names, or the folder `teacher`.
    `verify`: check every file against the folder's checksums first (one extra read of the folder)."""
    path = Path(path)
    cfg_file = path / ARD_CONFIG_FILE
    if not cfg_file.is_file():
        raise UserError(f"{path} is not an ARD export folder: it has no {ARD_CONFIG_FILE} (run launchers/export.py)")
    if verify:
        verify_export(path)
    with reading_export(path):
        ard_config = read_json(cfg_file)
        arch = {"ard": ard_config["ard"], "schedule": ard_config["schedule"], "sampling": ard_config.get("sampling")}
        if (path / LORA_FILE).is_file():
            return _load_adapter_export(path, ard_config, arch, dtype, teacher)
        if teacher is not None:
            warnings.warn(
                f"teacher={teacher} is ignored: {path} holds a full student, with its own backbone weights (a base "
                "teacher is for LoRA adapter exports, launchers/export.py --lora-adapter; leave --teacher out)",
                UserWarning,
                stacklevel=2,
            )
        student = _student_of(load_teacher(path, dtype=dtype), arch)
        heads = {k.removeprefix("heads."): v.to(dtype) for k, v in load_file(str(path / HEADS_FILE)).items()}
    student.heads.load_state_dict(heads, strict=True)
    return student.eval().requires_grad_(False)


def _load_adapter_export(path: Path, ard_config: dict, arch: dict, dtype, teacher) -> ARDStudent:
    from ard_scale.config.models import TeacherConfig

    base = ard_config["source"].get("base") or {}
    if teacher is None and base.get("family") is None:
        raise UserError(
            f"{path} is an adapter-only export of a student whose base teacher it does not name; pass "
            "teacher=DIR (the teacher folder it was trained from)"
        )
    try:
        if teacher is not None:
            model = load_teacher(teacher, dtype=dtype, family=ard_config["family"])
        else:
            section = TeacherConfig(**{k: v for k, v in base.items() if k != "seed"})
            model = teacher_from_config(section, base.get("seed", 0))
    except (ValueError, OSError) as e:
        raise UserError(
            f"{path} holds LoRA adapters for the teacher {str(teacher or base.get('path') or base.get('size'))!r}, "
            f"which could not be loaded ({e}); pass teacher=DIR (launchers/sample.py --teacher DIR)"
        ) from e
    student = _student_of(model.to(dtype), arch)
    adapters = load_file(str(path / LORA_FILE))  # diffusers' keys: transformer.<module>.lora_A.weight
    state = {"backbone." + re.sub(r"\.(lora_[AB])\.", r".\1.default.", k.removeprefix(LORA_PREFIX + ".")): v
             for k, v in adapters.items()}  # fmt: skip
    state.update({k: v for k, v in load_file(str(path / HEADS_FILE)).items()})
    if (path / TRAINED_FILE).is_file():
        state.update(load_file(str(path / TRAINED_FILE)))
    student.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return student.eval().requires_grad_(False)


def sample_noise(student: ARDStudent, batch_size: int, seed: int) -> torch.Tensor:
    """x_{τ_S} ~ N(0, I) of the shape the student was trained on (B, C, H, W), reproducible from `seed` (exports
    older than `sampling` in ard_config.json: the backbone's own sample size)."""
    if student.latent_shape is not None:
        shape = student.latent_shape
    else:
        side = student.backbone.config.sample_size
        shape = (student.in_channels, side, side)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *shape, generator=g)


def _compared_ard(arch: dict) -> dict:
    """The ARD settings that decide whether a student's weights fit another: not the history-attention kernel nor
    student.lora.share_teacher, which give the same numbers (neither is part of the config hash)."""
    ard = {k: v for k, v in arch["ard"].items() if k != "attention"}
    ard["lora"] = lora_layout(arch)
    return ard


def load_student_weights(student: ARDStudent, run_dir: str | Path, *, use_ema: bool = True) -> str:
    """Initialise `student` (a plain module, before DeepSpeed wraps it) from the latest checkpoint of another run,
    e.g. the regression stage for the GAN stage. Its ARD settings must match. Returns a description of the source."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(
            f"gan.init_from: {run_dir} has no checkpoints/ folder; give the run directory of a trained run",
            every_rank=True,  # every rank starts the GAN stage from the same run
        )
    state, arch, tag, weights = student_state_dict(
        run_dir, use_ema=use_ema, earlier_fix="to start from {tag}, write {tag} into {run_dir}/checkpoints/latest"
    )  # gan.init_from starts from the checkpoint `latest` names
    ours = student_architecture(student)
    if arch["family"] != ours["family"]:  # the student is its teacher's backbone: another teacher, another student
        raise UserError(
            f"gan.init_from: {run_dir} holds a {arch['family']} student, and this recipe's teacher is "
            f"teacher.family={ours['family']}: the GAN stage starts from a regression run of its own teacher; give "
            f"that run's teacher section (teacher.family={arch['family']}), or a {ours['family']} run as gan.init_from",
            every_rank=True,
        )
    theirs, mine = _compared_ard(arch), _compared_ard(ours)
    differing = sorted(k for k in mine if theirs.get(k) != mine[k])
    if differing:
        listing = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} here" for k in differing)
        raise UserError(
            f"gan.init_from: {run_dir} holds a {arch['family']} student with other ARD settings ({listing}); use the "
            "same student section as that run",
            every_rank=True,
        )
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"gan.init_from: the student in {run_dir}/{tag} does not fit this recipe's teacher: {e}", every_rank=True
        ) from e
    return f"{run_dir}/checkpoints/{tag} ({weights})"
