"""Write teacher trajectories on the student grid to MDS shards, for training with trajectory_source='offline'.

    python launchers/dump_trajectories.py [RECIPE] --teacher PATH --out DIR --num-samples N [--guidance 1.5] ...

The teacher: `--teacher PATH`, or the RECIPE's teacher.path, or its named teacher.size with the random weights its
trainer draws from train.seed. Sample i uses noise seed `--seed + i` and condition i mod num_classes
(class-conditional teachers), the caption embedding i mod n of `--captions` (a tensor file of (n+1, L, C) embeddings
whose last row is the null caption, as `launchers/fit_teacher.py` writes on the digits), or with `--data SHARDS`
(text teachers; or `data.path` of an `data.format: mds` RECIPE) the (i mod n)-th of the n valid captions of an MDS
caption shard set carrying the text its family reads (launchers/precompute_text.py --recipe: T5 tokens, CLIP-L ‖
CLIP-G ‖ T5 for SD3, Qwen2.5-VL's hidden states, and the pooled CLIP embedding where the family reads one), read in
storage order through `ard_scale.data.build_loader` and completed as the trainer completes it (the family's mask
rule; FLUX.1-dev's guidance embedded, with no CFG pass). The null condition of a CFG teacher comes from
`--null-caption FILE` (a torch dict {"t5_emb": (L, C), "t5_mask": (L,)}, as fit_teacher writes to
OUT/null_caption.pt on shards), else from the shards (precompute_text.py stores it), else TEACHER/null_caption.pt.

Resumable: samples are written in chunks of `--chunk-size`, each its own MDS folder DIR/chunk_NNNNN written by
`streaming.MDSWriter`; a chunk whose `index.json` exists is complete and skipped on re-run, a partial one is
rewritten, and so is the short last chunk of a dump rerun with a larger `--num-samples` (which extends it; a
smaller one is refused, since the trainer reads every complete chunk). Every
chunk is a function of its sample indices only, so a resumed or extended dump equals an uninterrupted one.

Columns per sample: `seed` int64; `label` int64 (-1 for captions); `caption_index` int64 (-1 for classes);
`states` float32 (S+1, C, H, W) noisy x_{τ_S} … x_{τ_0}; `x0` float32 (S+1, C, H, W) with `--record x0`. With
`--data`, the condition itself is stored inline with each trajectory (no side file to keep in step): `key` str (the
shard sample's key), `t5_emb` float32 (L, C) and `t5_mask` uint8 (L,), and `pooled_emb` float32 (D,) for families
with a CLIP slot, exactly as the loader yields them; `caption_index` is the sample's position in the shard set's
storage order (corrupt samples, which are skipped, keep their places: sample i takes the (i mod n)-th valid caption).
DIR/meta.json holds the teacher path, schedule, student times, teacher grid, solver, guidance, chunking (and data).
RECIPE (optional) supplies defaults for `teacher.path`, `diffusion.*` and `student.num_steps`; flags override it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config import RootConfig, load_config  # noqa: E402
from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule  # noqa: E402
from ard_scale.diffusion.solvers import SOLVERS  # noqa: E402
from ard_scale.diffusion.trajectory import teacher_trajectory, uniform_teacher_grid  # noqa: E402
from ard_scale.models.teachers import load_teacher, teacher_identity  # noqa: E402
from ard_scale.utils.cli import count, local_path  # noqa: E402


def schedule_from(teacher_path: Path, objective: str | None):
    """The schedule of a diffusers folder's scheduler config (DDIM/DPM -> VP, FlowMatch -> flow), else `objective`."""
    cfg_file = teacher_path / "scheduler" / "scheduler_config.json"
    if objective is None and cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        if "FlowMatch" in cfg["_class_name"]:
            if cfg.get("use_dynamic_shifting"):
                raise ValueError(
                    f"{cfg_file} shifts its grid with the resolution (use_dynamic_shifting): give the recipe "
                    "(its diffusion and data sections build the schedule) as the first argument"
                )
            return FlowSchedule(shift=cfg.get("shift", 1.0))
        return VPSchedule(
            num_train_timesteps=cfg.get("num_train_timesteps", 1000),
            beta_start=cfg.get("beta_start", 1e-4),
            beta_end=cfg.get("beta_end", 0.02),
            prediction_type=cfg.get("prediction_type", "epsilon"),
        )
    if objective in (None, "epsilon", "v_prediction"):
        return VPSchedule(prediction_type=objective or "epsilon")
    if objective == "flow":
        return FlowSchedule()
    raise ValueError(f"unknown prediction type {objective!r}; choose 'epsilon', 'v_prediction' or 'flow'")


def recipe_defaults(cfg: RootConfig | None) -> dict:
    """The dump's settings a loaded (validated) recipe gives: the trainer's teacher, student grid and solver."""
    if cfg is None:
        return {}
    d = cfg.diffusion
    out = {
        "teacher": cfg.teacher.path,
        "steps": cfg.student.num_steps,
        "substeps": d.substeps,
        "solver": d.solver,
        "guidance": d.guidance_scale,
        "guided_channels": d.guide_first_channels,
        "record": d.record,
        "objective": "flow" if d.schedule == "flow" else d.prediction_type,
    }
    if cfg.data.format == "mds":  # caption conditions come from MDS shards only (they carry the T5 embeddings)
        out["data"] = cfg.data.path
    return {k: v for k, v in out.items() if v is not None}


def caption_conditions(path: str, batch_size: int):
    """(caption_index, key, t5_emb (L, C), t5_mask (L,), pooled_emb (D,) or None) of an MDS caption shard set in
    storage order, cycling: the text precompute_text.py stored for the recipe's family. A corrupt sample is skipped
    (counted and warned by the loader); caption_index is a sample's place in storage order, corrupt ones included."""
    from ard_scale.data import DataConfig, build_loader

    # images are decoded too (the loader always does): at the smallest size, since only the captions are used
    config = DataConfig(
        format="mds", path=str(path), batch_size=batch_size, resolution=8, num_workers=0, shuffle=False, num_epochs=1
    )
    while True:
        num_read = 0
        for batch in build_loader(config, rank=0, world_size=1):
            if not batch["keys"]:  # every sample of this MDS batch was corrupt (skipped and counted)
                continue
            if "t5_emb" not in batch:
                raise ValueError(
                    f"the shards at {path} carry no text embeddings (t5_emb/t5_mask); precompute them with "
                    "launchers/precompute_text.py SHARDS OUT --recipe RECIPE"
                )
            pooled = batch.get("pooled_emb", [None] * len(batch["keys"]))
            for index, key, emb_LC, mask_L, pooled_D in zip(
                batch["sample_ids"], batch["keys"], batch["t5_emb"], batch["t5_mask"], pooled, strict=True
            ):
                yield index, key, emb_LC.float(), mask_L.to(torch.uint8), None if pooled_D is None else pooled_D.float()
                num_read += 1
        if num_read == 0:
            raise ValueError(f"the shard set at {path} holds no sample")


def null_caption(path: Path | None, data: str, teacher_dir: Path | None) -> Condition:
    """The null caption's condition (batch of one): `--null-caption FILE` (a torch dict {"t5_emb": (L, C),
    "t5_mask": (L,)}, as launchers/fit_teacher.py writes), else the one precompute_text.py stored with the shards,
    else TEACHER/null_caption.pt."""
    if path is None:
        from ard_scale.trainer.conditioning import precomputed_null

        stored = precomputed_null(data)
        if stored is not None:
            return stored
        path = None if teacher_dir is None else teacher_dir / "null_caption.pt"
    if path is None or not path.is_file():
        raise ValueError(
            f"guidance != 1 needs the null caption's condition: the shards at {data} hold none (precomputed before "
            f"precompute_text.py stored it) and {path or 'no teacher folder'} is not a file; pass --null-caption FILE "
            '(a torch dict {"t5_emb": (L, C), "t5_mask": (L,)}, as launchers/fit_teacher.py writes), precompute the '
            "shards again, or --guidance 1"
        )
    null = torch.load(path, map_location="cpu", weights_only=True)
    return Condition(text=null["t5_emb"].float()[None], text_mask=null["t5_mask"].long()[None])


def text_conditions(teacher, emb_BLC, mask_BL, pooled_BD, null: Condition | None, embedded: float | None):
    """A batch's condition and null condition from stored text, completed as the trainer's Conditioner does
    (`stored_condition`: the family's mask rule, the pooled embedding, a guidance-distilled teacher's value)."""
    from ard_scale.trainer.conditioning import batch_null, stored_condition

    cond = stored_condition(emb_BLC, mask_BL.long(), pooled_BD, use_mask=teacher.spec.text_mask, guidance=embedded)
    return cond, None if null is None else batch_null(null, *emb_BLC.shape[:2])


def chunk_samples(chunk_dir: Path) -> int:
    """Samples in a finished chunk, 0 where its index.json is not written (not begun, or interrupted)."""
    index = chunk_dir / "index.json"
    return sum(s["samples"] for s in json.loads(index.read_text())["shards"]) if index.is_file() else 0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("recipe", nargs="?", type=local_path, help="recipe YAML supplying defaults")
    parser.add_argument("--teacher", type=local_path, help="local diffusers teacher folder")
    parser.add_argument("--out", type=local_path, required=True)
    parser.add_argument("--num-samples", type=count(), required=True)
    parser.add_argument("--captions", type=local_path, help="(n+1, L, C) caption embeddings, last row the null caption")
    parser.add_argument("--data", help="MDS caption shards carrying T5 embeddings: the conditions of a text teacher")
    parser.add_argument("--null-caption", type=local_path, help="with --data: the null caption (default TEACHER/...)")
    parser.add_argument("--steps", type=count(), help="S student steps (default 4)")
    parser.add_argument("--substeps", type=count(), help="K teacher sub-steps per student interval (default 6)")
    parser.add_argument("--solver", choices=SOLVERS)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--guided-channels", type=int)
    parser.add_argument("--record", choices=("noisy", "x0"))
    parser.add_argument(
        "--objective",
        choices=("epsilon", "v_prediction", "flow"),
        help="without a recipe (default: the folder's scheduler); with one, the recipe builds the trainer's schedule",
    )
    parser.add_argument("--batch-size", type=count(), default=64)
    parser.add_argument("--chunk-size", type=count(), default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    cfg = load_config(args.recipe) if args.recipe is not None else None  # checked as the trainer checks it
    rec = recipe_defaults(cfg)
    defaults = {"steps": 4, "substeps": 6, "solver": "ddim", "guidance": 1.0, "record": "noisy", **rec}
    for key, value in defaults.items():
        if getattr(args, key.replace("-", "_"), None) is None:
            setattr(args, key, value)
    if args.teacher is None and (cfg is None or cfg.teacher.size is None):
        parser.error("give --teacher PATH (or a recipe with teacher.path or teacher.size)")
    args.teacher = None if args.teacher is None else Path(args.teacher)

    from streaming import MDSWriter

    device = torch.device(args.device)
    if args.teacher is not None:
        teacher = load_teacher(args.teacher).to(device)
    else:  # the recipe's named size, with the random weights its trainer draws from train.seed
        from ard_scale.models.teachers import teacher_from_config

        teacher = teacher_from_config(cfg.teacher, cfg.train.seed).to(device)
    from ard_scale.trainer.conditioning import distilled_guidance

    # a guidance-distilled teacher (FLUX.1-dev) embeds the scale in its condition and runs no CFG pass
    embedded = distilled_guidance(teacher, args.guidance)
    cfg_scale = 1.0 if teacher.spec.guidance == "embedded" else args.guidance
    shape = (teacher.in_channels, teacher.sample_size, teacher.sample_size)
    if cfg is not None:  # the trainer's own builders: the same grid (shifts included) and state shape
        from ard_scale.trainer.build import build_schedule, latent_shape

        schedule, shape = build_schedule(cfg, teacher.patch_size), latent_shape(cfg, teacher)
    else:
        schedule = schedule_from(Path(args.teacher), args.objective)
    student_grid = schedule.grid(args.steps)
    teacher_grid = uniform_teacher_grid(schedule, args.steps, args.substeps)
    captions = stream = null = None
    num_conditions = 1
    if teacher.condition_kind == "labels":
        num_conditions = teacher.num_classes
        if args.data is not None:
            warnings.warn(f"a class-conditional teacher ignores the caption shards {args.data}", stacklevel=1)
    elif args.data is not None:
        stream = caption_conditions(args.data, args.batch_size)
        if cfg_scale != 1:
            null = null_caption(args.null_caption, args.data, args.teacher)
    elif args.captions is not None:
        captions = torch.load(args.captions, map_location="cpu", weights_only=True).float()
        num_conditions = captions.shape[0] - 1
    else:
        raise ValueError(
            "a text teacher needs caption embeddings: pass --data SHARDS (MDS caption shards with T5 embeddings) "
            "or --captions FILE ((n+1, L, C), last row the null caption)"
        )
    columns = {"seed": "int64", "label": "int64", "caption_index": "int64", "states": "ndarray:float32"}
    if stream is not None:
        columns.update(key="str", t5_emb="ndarray:float32", t5_mask="ndarray:uint8")
        if "clip" in teacher.spec.text_encoders:  # FLUX.1's and SD3's pooled CLIP embedding
            columns["pooled_emb"] = "ndarray:float32"
    if args.record == "x0":
        columns["x0"] = "ndarray:float32"

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "teacher": str(args.teacher) if args.teacher is not None else f"{cfg.teacher.family} size {cfg.teacher.size}",
        "teacher_identity": teacher_identity(
            args.teacher,
            teacher.family,
            None if cfg is None else cfg.teacher.size,
            None if cfg is None else cfg.train.seed,
        ),  # what the trainer compares: which weights solved these trajectories
        "schedule": {"type": type(schedule).__name__, **vars(schedule)},
        "student_times": student_grid.tolist(),
        "teacher_grid": teacher_grid.tolist(),
        "solver": args.solver,
        "guidance_scale": args.guidance,
        "guided_channels": args.guided_channels,
        "record": args.record,
        "seed": args.seed,
        "num_samples": args.num_samples,
        "chunk_size": args.chunk_size,
        "columns": columns,
    }
    if stream is not None:
        meta["data"] = str(args.data)
    meta_file = args.out / "meta.json"
    if meta_file.is_file() and {**json.loads(meta_file.read_text()), "num_samples": None} != {
        **meta,
        "num_samples": None,
    }:
        raise ValueError(f"{args.out} holds a dump with other settings (see meta.json); use a new --out folder")
    held = json.loads(meta_file.read_text())["num_samples"] if meta_file.is_file() else 0
    if args.num_samples < held:  # its later chunks would stay, and the trainer reads every complete chunk
        raise ValueError(
            f"{args.out} already holds {held} samples, more than --num-samples {args.num_samples}; the trainer would "
            f"read all {held}: use a new --out folder, or rerun with --num-samples {held} or more"
        )
    meta_file.write_text(json.dumps(meta, indent=2))

    written = skipped = 0
    for start in range(0, args.num_samples, args.chunk_size):
        chunk_dir = args.out / f"chunk_{start // args.chunk_size:05d}"
        stop = min(start + args.chunk_size, args.num_samples)
        # finished with these samples: a dump extended with a larger --num-samples rewrites its short last chunk
        if chunk_samples(chunk_dir) >= stop - start:
            skipped += stop - start
            for _ in range(stop - start if stream is not None else 0):
                next(stream)  # keep sample i on caption i mod n
            continue
        shutil.rmtree(chunk_dir, ignore_errors=True)  # a partial chunk from an interrupted run
        # no `with`: MDSWriter.__exit__ finishes (writes index.json) even on an exception, marking a partial chunk done
        writer = MDSWriter(out=str(chunk_dir), columns=columns)
        for b0 in range(start, stop, args.batch_size):
            idx = torch.arange(b0, min(b0 + args.batch_size, stop))
            cond_idx = idx % num_conditions
            if stream is not None:
                cond_idx, keys, emb_BLC, mask_BL, pooled_BD = zip(*(next(stream) for _ in idx), strict=True)
                emb_BLC, mask_BL = torch.stack(emb_BLC), torch.stack(mask_BL)
                pooled_BD = None if pooled_BD[0] is None else torch.stack(pooled_BD)
                cond, null_cond = text_conditions(teacher, emb_BLC, mask_BL, pooled_BD, null, embedded)
            elif captions is None:
                cond = Condition(labels=cond_idx)
                null_cond = teacher.null_condition(len(idx))
            else:
                cond = Condition(text=captions[cond_idx])
                null_cond = Condition(text=captions[-1:].expand(len(idx), -1, -1))
            tr = teacher_trajectory(
                teacher,
                schedule,
                cond,
                null_cond=null_cond,
                guidance_scale=cfg_scale,
                solver=args.solver,
                record=args.record,
                guided_channels=args.guided_channels,
                guide=teacher.spec.guide,
                student_grid=student_grid,
                teacher_grid=teacher_grid,
                latent_shape=shape,
                seeds=(args.seed + idx).tolist(),
                device=device,
            )
            for j in range(len(idx)):
                is_class = captions is None and stream is None
                sample = {
                    "seed": int(args.seed + idx[j]),
                    "label": int(cond_idx[j]) if is_class else -1,
                    "caption_index": -1 if is_class else int(cond_idx[j]),
                    "states": tr.states[j].cpu().numpy(),
                }
                if stream is not None:
                    sample.update(key=keys[j], t5_emb=emb_BLC[j].numpy(), t5_mask=mask_BL[j].numpy())
                    if pooled_BD is not None:
                        sample["pooled_emb"] = pooled_BD[j].numpy()
                if tr.x0 is not None:
                    sample["x0"] = tr.x0[j].cpu().numpy()
                writer.write(sample)
        writer.finish()
        written += stop - start
        print(f"{chunk_dir.name}: samples {start}..{stop - 1}", flush=True)
    print(f"wrote {written} samples, kept {skipped} already dumped, in {args.out}")
    return {"written": written, "skipped": skipped}


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a bad recipe (ConfigError), path or source: its cause and fix, without a traceback
        sys.exit(f"error: {e}")
