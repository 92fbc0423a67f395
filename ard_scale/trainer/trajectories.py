"""Where a training step gets its teacher trajectories: `train.trajectory_source` (DESIGN.md §1, §2).

Every source is called as `source(batch, step, micro) -> (states (B, S+1, C, H, W), condition)` by
`ard_scale.trainer.step.teacher_states`, once per micro-batch (`micro` = 0 … train.grad_accum-1), on every rank, in
the same order, and counts the micro-batches the teacher solved in `num_solved`.

online   The teacher solves the batch's trajectories every step. Noise seeds are keyed on (step, rank, micro,
         index): see `NoiseSeeds`.

replay   R = train.replay_times. The steps c … c+R-1 with c % R == 0 form a cycle. At the cycle's first step the
         teacher solves trajectories for that step's micro-batches exactly as `online` does (same conditions, same
         seeds, so step c trains on what `online` would); the cycle's other R-1 steps train on the same cached
         (states, condition) pairs again, micro-batch m on the trajectories of micro-batch m.
         - Data stream: the loop still draws grad_accum batches every step, so the data position, its resume
           state and `samples_seen` advance exactly as with `online` (and a GAN step's real images stay fresh); on
           reuse steps the batches' conditions are not used. With replay an epoch of the data therefore gives the
           teacher 1/R of its conditions — the price of calling the teacher R times less often.
         - Noise: a reused trajectory keeps the noise it was solved from (the seeds of step c); the regression
           loss has no other randomness. Per-step randomness elsewhere (e.g. a GAN's re-noising) stays keyed on the
           step itself.
         - `replayed` says whether the last call returned an earlier step's pair, whose condition is not the
           batch's: the GAN stage then encodes the batch's own condition for its real images.
         - Resume: the cache (states and condition of every micro-batch, and its cycle start) is part of this
           rank's checkpoint state (`state_dict`), so stopping inside a cycle and resuming continues it with the
           same trajectories, bit for bit. A universal checkpoint on another world size carries no per-rank state:
           the resumed run starts a new cycle at the resume step (fresh trajectories from that step's batches).

offline  Trajectories written by launchers/dump_trajectories.py, read with their conditions from
         data.trajectory_path: the run's loader is then the trajectory stream (ard_scale.data.trajectories), with
         the exact resumable position of the image stream, and the teacher never runs. `check_offline_dump`
         refuses a dump made for another student grid or latent shape.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch

from ard_scale.config.models import DiffusionConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import Schedule
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.distributed.engines import gather_once
from ard_scale.errors import UserError
from ard_scale.models.families import get_family
from ard_scale.utils.noise import Stream, noise_seed


class TrajectorySource(Protocol):
    """`source(batch, step, micro) -> (states (B, S+1, C, H, W), condition)`; its per-rank resume state; the
    micro-batches the teacher solved so far."""

    num_solved: int

    def __call__(self, batch: dict[str, Any], step: int, micro: int = 0) -> tuple[torch.Tensor, Condition]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class NoiseSeeds:
    """Noise seeds keyed on the training position (global step, rank, micro-batch, index): a resumed run draws the
    same noise, and no two samples of a run share one. Micro-batches of one step are numbered after the rank, so
    grad_accum=2 with batch B draws the same seeds, in the same per-rank order, as grad_accum=1 with batch 2B.

    Every micro-batch owns `batch_size` (data.batch_size) consecutive indices, however many samples it holds: a
    short batch (corrupt samples skipped, the end of finite data, a bucket's last batch) takes the first of its
    own, never another position's (numbered by its own size it drew other ranks' and steps' noise)."""

    seed: int  # train.seed
    rank: int
    world_size: int
    grad_accum: int
    batch_size: int  # data.batch_size: the indices each micro-batch owns

    def __call__(self, step: int, num_samples: int, micro: int = 0) -> list[int]:
        assert num_samples <= self.batch_size, f"a micro-batch of {num_samples} > data.batch_size={self.batch_size}"
        first = ((step * self.world_size + self.rank) * self.grad_accum + micro) * self.batch_size
        return [noise_seed(Stream.TRAIN, self.seed, first + i) for i in range(num_samples)]


class OnlineTrajectories:
    """The teacher's ODE on every call: `teacher` (the frozen engine, or the Teacher itself) solves the batch's
    conditions from `conditioner` on `schedule` at the student's `num_student_steps`, with `diffusion`'s solver
    settings and the family's CFG combination `guide`, from the noise of `seeds`; `gather_teacher_once` fetches a
    ZeRO-3 teacher's weights once per trajectory batch. States land on `device`. With `bucket_downsample` (the VAE's
    downsampling, for data.buckets) the states take the size of the batch's images (its aspect-ratio bucket) in
    place of `latent_shape`'s."""

    def __init__(
        self,
        teacher,
        schedule: Schedule,
        conditioner,
        *,
        seeds: NoiseSeeds,
        latent_shape: tuple[int, int, int],
        num_student_steps: int,
        diffusion: DiffusionConfig,
        guide=None,
        gather_teacher_once: bool = False,
        bucket_downsample: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.teacher, self.schedule, self.conditioner, self.seeds = teacher, schedule, conditioner, seeds
        self.latent_shape, self.num_student_steps, self.diffusion = latent_shape, num_student_steps, diffusion
        self.guide, self.gather_teacher_once, self.device = guide, gather_teacher_once, device
        self.bucket_downsample = bucket_downsample
        self.num_solved = 0
        self.replayed = False  # the last call's condition is the batch's own (see ReplayTrajectories)

    def shape_of(self, batch: dict[str, Any]) -> tuple[int, int, int]:
        """(C, H, W) of this batch's states: `latent_shape`, or with buckets its images' size in latents."""
        if self.bucket_downsample is None:
            return self.latent_shape
        height, width = batch["images"].shape[-2:]
        return (self.latent_shape[0], height // self.bucket_downsample, width // self.bucket_downsample)

    def __call__(self, batch: dict[str, Any], step: int, micro: int = 0) -> tuple[torch.Tensor, Condition]:
        d = self.diffusion
        cond, null = self.conditioner(batch)
        gather = (lambda: gather_once(self.teacher)) if self.gather_teacher_once else contextlib.nullcontext
        traj = teacher_trajectory(
            self.teacher,
            self.schedule,
            cond,
            latent_shape=self.shape_of(batch),
            seeds=self.seeds(step, cond.batch_size, micro),
            null_cond=null,
            guidance_scale=self.conditioner.cfg_scale,  # 1 for a guidance-embedding teacher: cond carries the value
            num_student_steps=self.num_student_steps,
            substeps=d.substeps,
            solver=d.solver,
            record=d.record,
            guided_channels=d.guide_first_channels,
            guide=self.guide,  # the family's CFG combination (Qwen-Image rescales the norm)
            gather=gather,
            device=self.device,  # noise drawn on the CPU from its seed, then moved: the same on any device
        )
        self.num_solved += 1
        return traj.states, cond

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _cond_to_dict(cond: Condition) -> dict[str, torch.Tensor | None]:
    return {f.name: getattr(cond, f.name) for f in fields(cond)}


class ReplayTrajectories(OnlineTrajectories):
    """Each solved trajectory trains `replay_times` consecutive steps (see the module docstring)."""

    def __init__(self, *args, replay_times: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay_times = replay_times
        self.cycle_start: int | None = None
        self.cache: dict[int, tuple[torch.Tensor, Condition]] = {}  # micro-batch -> (states, condition)

    def __call__(self, batch: dict[str, Any], step: int, micro: int = 0) -> tuple[torch.Tensor, Condition]:
        start = step - step % self.replay_times
        if self.cycle_start is not None and self.cycle_start < start <= step:  # a new cycle began
            self.cycle_start, self.cache = None, {}
        self.replayed = micro in self.cache
        if not self.replayed:  # a cycle's first step, or a resume without the cache (new world size)
            self.cache[micro] = super().__call__(batch, step, micro)
            if self.cycle_start is None:
                self.cycle_start = step
        return self.cache[micro]

    def state_dict(self) -> dict:
        return {
            "replay_times": self.replay_times,
            "cycle_start": self.cycle_start,
            "cache": {m: (states, _cond_to_dict(cond)) for m, (states, cond) in self.cache.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("replay_times") != self.replay_times:
            raise UserError(
                f"the checkpoint's replay cache was made with train.replay_times={state.get('replay_times')}, this "
                f"run has {self.replay_times}; resume with the same value (or start a new run)"
            )
        self.cycle_start = state["cycle_start"]
        # the rank file is read onto the CPU: back to where this run's student reads its states
        self.cache = {
            int(m): (states.to(self.device), Condition(**cond).to(self.device))
            for m, (states, cond) in state["cache"].items()
        }


class OfflineTrajectories:
    """States and their condition, stored with the batch by the trajectory loader; moved to `device`. The text is
    stored as precompute_text.py writes it (t5_emb, t5_mask, pooled_emb) and completed by the run's `conditioner`
    (`Conditioner.stored`: the family's mask rule, a guidance-distilled teacher's embedded value)."""

    num_solved = 0
    replayed = False

    def __init__(self, conditioner, device: torch.device | str = "cpu"):
        self.conditioner, self.device = conditioner, device

    def __call__(self, batch: dict[str, Any], step: int, micro: int = 0) -> tuple[torch.Tensor, Condition]:
        if "labels" in batch:
            cond = Condition(labels=batch["labels"].long())
        else:  # the caption's text, stored with the trajectory (no encoder or null caption needed)
            cond = self.conditioner.stored(batch["t5_emb"], batch["t5_mask"], batch.get("pooled_emb"))
        return batch["states"].float().to(self.device), cond.to(self.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_trajectory_source(
    source: str, teacher, schedule: Schedule, conditioner, *, replay_times: int = 1, device="cpu", **kwargs
):
    """The source for `train.trajectory_source` (online | replay | offline); the arguments those of
    OnlineTrajectories (offline uses only the conditioner, to complete the stored conditions)."""
    if source == "online":
        return OnlineTrajectories(teacher, schedule, conditioner, device=device, **kwargs)
    if source == "replay":
        return ReplayTrajectories(teacher, schedule, conditioner, replay_times=replay_times, device=device, **kwargs)
    if source == "offline":
        return OfflineTrajectories(conditioner, device)
    raise UserError(f"train.trajectory_source: unknown {source!r}; choose 'online', 'replay' or 'offline'")


# meta.json's record of the teacher's sampler -> the recipe setting each reflects (`check_offline_dump`)
SAMPLER_SETTINGS = {
    "teacher_grid": "teacher grid (diffusion.substeps, diffusion.schedule)",
    "solver": "diffusion.solver",
    "guidance_scale": "diffusion.guidance_scale",
    "guided_channels": "diffusion.guide_first_channels",
    "teacher_identity": "the teacher (teacher.path's weights, or teacher.size and train.seed)",
}


def _same_times(dumped: list[float], ours: list[float]) -> bool:
    if len(dumped) != len(ours):
        return False
    return all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(dumped, ours, strict=True))


def _sampler_problems(meta: dict, sampler: dict) -> list[str]:
    """How the dump's recorded sampler (meta.json) differs from the recipe's `sampler`, one line per setting; a
    setting the dump predates is not checked."""
    out = []
    for key, value in sampler.items():
        if key not in meta:
            continue
        dumped, what = meta[key], SAMPLER_SETTINGS[key]
        if key == "teacher_grid":
            if len(dumped) != len(value):
                out.append(
                    f"{what}: the dump's teacher took {len(dumped) - 1} steps, the recipe's takes {len(value) - 1}"
                )
            elif not _same_times(dumped, value):
                out.append(f"{what}: the dump's teacher took its {len(value) - 1} steps at other times")
        elif key == "teacher_identity" and (not isinstance(dumped, dict) or set(dumped) != set(value)):
            continue  # a folder's fingerprint against a named size's seed: not comparable (see teacher_identity)
        elif dumped != value:
            out.append(f"{what}: the dump has {dumped!r}, the recipe {value!r}")
    return out


def check_offline_dump(
    meta: dict,
    sample_shape: tuple[int, ...],
    condition_kind: str | None,
    *,
    path: str,
    student_times: list[float],
    latent_shape: tuple,
    family: str,
    sampler: dict | None = None,
) -> None:
    """Refuse a trajectory dump whose student grid, latent shape or condition differs from the recipe's, naming
    both; with `sampler` ({"teacher_grid", "solver", "guidance_scale", "guided_channels", "teacher_identity"} of the
    recipe), also one solved by another teacher, on another grid, with another solver or at another guidance
    (meta.json records them; a dump from before a key was recorded is not checked on it):
    the run's recipe, its export and its evaluation would claim a sampler the trajectories were not made with."""
    problems = _sampler_problems(meta, sampler or {})
    wanted = get_family(family).condition_kind
    if condition_kind is None:
        problems.append(
            "condition: the dump stores caption indices only (made with --captions); dump with --data SHARDS so "
            "each trajectory carries its T5 embedding"
        )
    elif condition_kind != wanted:
        problems.append(f"condition: the dump stores {condition_kind}, teacher.family={family!r} needs {wanted}")
    dumped_times = [float(t) for t in meta.get("student_times", [])]
    if not _same_times(dumped_times, student_times):
        problems.append(
            f"student grid: the dump has {len(dumped_times) - 1} steps at times {dumped_times}, the recipe "
            f"(student.num_steps={len(student_times) - 1}, diffusion.schedule) has {student_times}"
        )
    expected = (len(student_times), *latent_shape)
    if tuple(sample_shape) != expected:
        problems.append(
            f"trajectory shape: the dump stores (S+1, C, H, W) = {tuple(sample_shape)}, the recipe's student and "
            f"teacher need {expected}"
        )
    if problems:
        raise UserError(
            f"the offline trajectories at data.trajectory_path={path!r} do not fit this recipe: {'; '.join(problems)}. "
            "Dump them again for this recipe (launchers/dump_trajectories.py RECIPE --out DIR) or fix the recipe",
            every_rank=True,  # one dump, one recipe: every rank finds the same
        )
