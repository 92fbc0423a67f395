"""The training loop: build, resume, step, log, checkpoint, stop. Reads top to bottom."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ard_scale.checkpoint.export import full_ema_state_dict
from ard_scale.checkpoint.layout import atomic_write_text, tag_of
from ard_scale.checkpoint.manager import CheckpointManager
from ard_scale.checkpoint.run_lock import lock_run_dir, not_writable
from ard_scale.config import ConfigError, RootConfig, dump_yaml, to_dict
from ard_scale.data.samples import SkipCounter
from ard_scale.distributed.collectives import sum_counts_over_ranks, sum_over_ranks
from ard_scale.distributed.ema import ZeroEMA
from ard_scale.distributed.engines import init_distributed, reapply_optimizer_settings
from ard_scale.errors import UserError
from ard_scale.evaluation.plots import plot_metrics
from ard_scale.pipeline import launcher_command
from ard_scale.trainer.build import build_run
from ard_scale.trainer.evaluate import build_loop_evaluation
from ard_scale.trainer.gan import DivergenceWatch, build_gan, gan_step
from ard_scale.trainer.step import any_rank, regression_step
from ard_scale.trainer.stop import DataPosition, StopSignal
from ard_scale.utils.strict_json import strict_json

DATA_ENDED = "data_ended"
"""RUN_DIR/data_ended: the tag of the step at which the data ran out (written when it did, removed when a run goes
on). A run whose `latest` it names has nothing left to train: launchers/slurm/lib.sh's `ard_run_finished` reads it,
so a job stopped by a signal then is not requeued to resume, find no data and end again."""


class ProcessRNG:
    """This process's torch (CPU, and CUDA once CUDA is in use), numpy and Python RNG states as one checkpointed
    piece. Tensors and plain containers only, so the rank file loads with torch.load(weights_only=True).

    CUDA: the generator of this rank's own device (the current one, which DeepSpeed set), which draws e.g. LoRA
    dropout and any torch.rand on the GPU. A checkpoint without it (written on CPU, or before it was saved) leaves the
    CUDA generator as it is; one with it, resumed without CUDA, has no generator to restore it into."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        numpy = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
        state = {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
        random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))


@dataclass
class Progress:
    """The run's counters: optimizer steps taken, real samples seen over all ranks, NaN-skipped steps, and (not
    saved) the current streak of NaN steps."""

    step: int = 0
    samples_seen: int = 0
    nan_skips: int = 0
    nan_streak: int = 0

    def record(self, metrics: dict, step_samples: int) -> None:
        """Count one optimizer step; a non-finite metric marks it NaN-skipped (metrics["nan"])."""
        metrics["nan"] = metrics["nan"] or not all_finite(metrics)
        self.step += 1
        self.samples_seen += step_samples  # short and dropped batches are not counted
        self.nan_skips += metrics["nan"]
        self.nan_streak = self.nan_streak + 1 if metrics["nan"] else 0

    def state_dict(self) -> dict:
        return {"step": self.step, "samples_seen": self.samples_seen, "nan_skips": self.nan_skips}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.samples_seen, self.nan_skips = state["step"], state["samples_seen"], state["nan_skips"]


class MetricsLog:
    """RUN_DIR/metrics.jsonl, one JSON object per logged step, rank 0 only; with `tensorboard_dir`, the same numbers
    as TensorBoard scalars (tag = key, lists as key/i, booleans as 0/1, nulls left out) at the record's step."""

    def __init__(self, path: Path, enabled: bool, tensorboard_dir: Path | None = None):
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UserError(
                    f"log.tensorboard=true needs the tensorboard package ({e}); install it with "
                    "`pip install -c constraints.txt -e .[train]` or set log.tensorboard=false"
                ) from e
            self.writer = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = strict_json(record)  # metrics.jsonl stays JSON: a non-finite number is written as null
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self.writer is not None:
            step = record.get("step")
            for key, value in record.items():
                values = enumerate(value) if isinstance(value, list) else [(None, value)]
                for i, v in values:
                    if isinstance(v, bool | int | float) and key != "step":
                        self.writer.add_scalar(key if i is None else f"{key}/{i}", float(v), step)
            self.writer.flush()  # a run stopped by an error still leaves its events

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(cfg: RootConfig, stop: StopSignal | None = None) -> list[float]:
    """Run (or resume) the recipe to `train.max_steps`. Returns the losses of the steps run in this process. `stop`:
    the launcher's, made as its process started (a stop signal that came since is kept), else one made here."""
    stop = stop or StopSignal()  # first: a pre-emption signal during start-up must not be lost
    quiet_library_warnings()
    rank, world = init_distributed()
    check_global_batch(cfg, world)
    ckpt = open_run_dir(cfg, rank)
    run_dir, ck = ckpt.run_dir, cfg.checkpoint
    run = build_run(cfg, rank, world, adapt_ds_config=ckpt.resume_ds_config, fresh=ckpt.latest_tag() is None)
    gan = build_gan(run, cfg.gan, seed=cfg.train.seed, grad_clip=cfg.train.grad_clip) if cfg.gan.enabled else None
    watch = DivergenceWatch(cfg.gan.divergence_factor) if gan is not None else None
    ema = ZeroEMA(run.engine, cfg.train.ema_decay) if cfg.train.ema_decay else None
    progress = Progress()
    dropped = SkipCounter()  # this rank's valid samples left out because another rank's micro-batch had none
    position = DataPosition(run.loader)
    track_state(ckpt, run, position, progress, dropped, gan, watch, ema)
    resumed = ckpt.resume(run.engine)
    if rank == 0:  # only once the checkpoint accepted this recipe: a refused resume leaves the run's own as it was
        dump_yaml(cfg, run_dir / "config.yaml")
        (run_dir / DATA_ENDED).unlink(missing_ok=True)  # this run trains on (e.g. under more data.num_epochs)
    if run.init_from is not None:
        say(rank, f"the GAN stage's student starts from {run.init_from}")
    if resumed is not None:
        tr = cfg.train  # this run's, not the checkpoint's (DeepSpeed restores the saved ones)
        reapply_optimizer_settings(run.engine, lr=tr.lr, betas=tr.betas, weight_decay=tr.weight_decay)
        say(rank, f"resumed from step {progress.step} ({ckpt.dir / resumed.tag}, {progress.samples_seen} samples)")
        if not resumed.same_world:
            continue_on_new_world(ckpt, run, ema, progress.step, world)
        elif ema is not None and "ema" in resumed.absent:
            restart_ema(ema, ckpt.dir / resumed.tag)
    tensorboard_dir = run_dir / "tensorboard" if cfg.log.tensorboard else None
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=rank == 0, tensorboard_dir=tensorboard_dir)
    evaluation = build_loop_evaluation(cfg, run, ema, log.write)  # eval.every: metrics on all ranks, EMA swapped in
    restarted = resumed is not None and not resumed.same_world  # the data stream restarted its epoch
    check_reachable(cfg, run.loader.max_batches(), rank, world, progress.step if restarted else 0)
    batches, losses = iter(run.loader), []
    bar = tqdm(total=cfg.train.max_steps, initial=progress.step, disable=rank != 0 or not cfg.log.progress_bar)
    saved_step = progress.step
    while progress.step < cfg.train.max_steps:
        t0 = time.perf_counter()
        position.mark()
        drawn = draw_micro_batches(batches, cfg.train.grad_accum, dropped, stop)  # collective
        if drawn is STOPPED:  # a job-wide stop signal took some rank's data workers with it mid-draw
            position.rewind()  # this step's draws were not trained on: a resume draws them again
        if drawn is None or drawn is STOPPED:  # every rank stops here, at the same step
            if progress.step > saved_step:
                ckpt.save_tracked(run.engine, progress.step)
            if drawn is None and rank == 0:  # the run is over: a Slurm job stopped by a signal now is not requeued
                atomic_write_text(run_dir / DATA_ENDED, tag_of(progress.step))
            say(rank, data_ended(cfg, run_dir, progress.step) if drawn is None else stopped(ckpt, progress.step))
            break
        micro_batches, step_samples = drawn
        metrics = optimizer_step(run, gan, ema, micro_batches, progress.step)
        progress.record(metrics, step_samples)
        losses.append(metrics["loss"])
        samples_per_s = step_samples / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4g}", samples_per_s=f"{samples_per_s:.1f}")
        if progress.step % cfg.log.every == 0 or progress.step == cfg.train.max_steps:
            log.write(step_record(run, dropped, progress, metrics, samples_per_s))  # collective
        evaluation.maybe_run(progress.step)
        diverged = watch is not None and watch_divergence(cfg, watch, progress.step, metrics, rank)
        too_many_nan = progress.nan_streak >= cfg.train.max_consecutive_nan
        stopping = any_rank(stop.received)
        due = progress.step % ck.every == 0 or progress.step == cfg.train.max_steps
        if due or stopping or too_many_nan or diverged:
            ckpt.save_tracked(run.engine, progress.step)
            saved_step = progress.step
        raise_if_unhealthy(progress, run_dir, too_many_nan=too_many_nan, diverged=diverged, gan=gan is not None)
        if stopping:
            say(rank, stopped(ckpt, progress.step))
            break
    bar.close()
    log.close()
    if rank == 0:
        plot_metrics(run_dir)
    say(rank, summary(cfg, run_dir, ckpt, progress.step))
    return losses


def open_run_dir(cfg: RootConfig, rank: int) -> CheckpointManager:
    """checkpoint.run_dir, created and held by this run (`lock_run_dir`), and its checkpoint manager. The resolved
    recipe goes to config.yaml once the resume has accepted it (`train`)."""
    ck = cfg.checkpoint
    run_dir = Path(ck.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # the same folder on every rank
        raise UserError(not_writable(run_dir, e), every_rank=True) from e
    lock_run_dir(run_dir, rank)  # one run per folder: a second one stops here, before it writes
    return CheckpointManager(
        run_dir, keep_last=ck.keep_last, config_dict=to_dict(cfg), allow_recipe_change=ck.allow_recipe_change
    )


def optimizer_step(run, gan, ema, micro_batches: list[dict], step: int) -> dict:
    """One optimizer step of the student (the GAN stage's, or regression over the micro-batches), then the EMA
    unless the step was NaN-skipped. Returns the step's metrics."""
    if gan is not None:
        metrics = gan_step(run, gan, micro_batches[0], step)
    else:
        metrics = regression_step(run, micro_batches, step)
    if ema is not None and not metrics["nan"]:
        ema.update()
    return metrics


def check_global_batch(cfg: RootConfig, world: int) -> None:
    """train.global_batch_size, when given, must be what data.batch_size × ranks × grad_accum makes."""
    global_batch = cfg.data.batch_size * world * cfg.train.grad_accum  # samples per optimizer step
    if cfg.train.global_batch_size is not None and cfg.train.global_batch_size != global_batch:
        raise UserError(
            f"train.global_batch_size={cfg.train.global_batch_size} but data.batch_size × ranks × train.grad_accum = "
            f"{cfg.data.batch_size} × {world} × {cfg.train.grad_accum} = {global_batch}; override data.batch_size or "
            "train.grad_accum for this number of ranks",
            every_rank=True,
        )


def stopped(ckpt: CheckpointManager, step: int) -> str:
    """The stop's last line. A stop during the first step's draw leaves no checkpoint to name."""
    if ckpt.latest_tag() is None:
        return f"stop signal at step {step}: nothing was trained or saved; rerun the same command to start the run"
    return f"stop signal: checkpoint of step {step} in {ckpt.dir}; rerun the same command to resume"


def track_state(
    ckpt: CheckpointManager, run, position: DataPosition, progress: Progress, dropped: SkipCounter, gan, watch, ema
) -> None:
    """Register every piece a resume must restore. Global: the counters and the GAN heads with their optimizer (the
    same on every rank); per rank: the data position, the dropped-sample counts, the RNGs, the trajectory source
    (e.g. the replay cache mid-cycle) and the EMA shard. The student engine itself is DeepSpeed's."""
    ckpt.track("progress", progress)
    if gan is not None:  # optional: a regression checkpoint resumed as a GAN stage (allow_recipe_change)
        ckpt.track("gan", gan, optional=True)
        ckpt.track("gan_watch", watch, optional=True)
    ckpt.track("data", position, per_rank=True)
    ckpt.track("dropped", dropped, per_rank=True)
    ckpt.track("rng", ProcessRNG(), per_rank=True)
    ckpt.track("trajectories", run.trajectories, per_rank=True)
    if ema is not None:  # optional: a checkpoint written with train.ema_decay off (allow_recipe_change)
        ckpt.track("ema", ema, per_rank=True, optional=True)


def restart_ema(ema: ZeroEMA, checkpoint: Path) -> None:
    """The resumed checkpoint has no EMA (written with train.ema_decay off): start it from the resumed weights
    rather than keep the weights the student was built with."""
    ema.restart()
    warnings.warn(
        f"checkpoint {checkpoint} holds no EMA (train.ema_decay was off when it was written): the EMA starts from "
        "the resumed weights",
        stacklevel=2,
    )


def continue_on_new_world(ckpt: CheckpointManager, run, ema, step: int, world: int) -> None:
    """After a universal checkpoint on a new number of ranks: model and optimizer continued, the per-rank pieces
    could not (their positions do not map onto the new ranks); the EMA is reassembled from the old ranks' shards."""
    warnings.warn(
        f"resumed step {step} on {world} ranks from a universal checkpoint: model and optimizer continue, the data "
        "stream restarts its epoch (noise seeds stay keyed on the step)",
        stacklevel=2,
    )
    if ema is not None:  # reassemble the old ranks' EMA shards into full weights, then re-shard
        shapes = {n: getattr(p, "ds_shape", p.shape) for n, p in run.student.named_parameters()}
        full = full_ema_state_dict(ckpt.run_dir, ckpt.loaded_tag, shapes)
        if full is not None:
            ema.load_full_state_dict(full)
        else:
            restart_ema(ema, ckpt.dir / ckpt.loaded_tag)


def step_record(run, dropped: SkipCounter, progress: Progress, metrics: dict, samples_per_s: float) -> dict:
    """The metrics.jsonl line of a logged step; the skip counts are summed over ranks (collective)."""
    skipped = sum_counts_over_ranks(dict(run.loader.skips.counts + dropped.counts))
    return {
        **metrics,
        "samples_per_s": samples_per_s,
        "max_mem_gb": _max_mem_gb(),
        "skipped_samples": sum(skipped.values()),  # over all ranks
        **{f"skipped_samples/{reason}": n for reason, n in skipped.items()},
        "nan_skips": progress.nan_skips,
        "samples_seen": progress.samples_seen,
    }


def watch_divergence(cfg: RootConfig, watch: DivergenceWatch, step: int, metrics: dict, rank: int) -> bool:
    """Feed the GAN watchdog; True when it fired and gan.stop_on_divergence asks to stop (it warns either way)."""
    message = watch.update(step, metrics["loss"], metrics["gan_weight"])
    if message and rank == 0:
        warnings.warn(message, stacklevel=2)
    return bool(message) and cfg.gan.stop_on_divergence


def raise_if_unhealthy(
    progress: Progress, run_dir: Path, *, too_many_nan: bool, diverged: bool, gan: bool = False
) -> None:
    """After the checkpoint of the step was saved: stop with the error that names the cause and the fix. No NaN/Inf
    reached the saved weights: a NaN/Inf loss gets no backward and a NaN/Inf gradient no update (`step_student`)."""
    step = progress.step
    if too_many_nan:  # both decisions are every rank's alike (the NaN flag is any rank's, the losses are averaged)
        stage = "; in the GAN stage, lower gan.weight or gan.d_lr too" if gan else ""
        raise UserError(
            f"the loss or its gradient was NaN/Inf for {progress.nan_streak} steps in a row (up to step {step}); a "
            f"checkpoint was saved in {run_dir} (no NaN/Inf reached the weights). Resume it with a lower train.lr and "
            f"checkpoint.allow_recipe_change=true{stage}, check the data and teacher, or raise "
            "train.max_consecutive_nan",
            every_rank=True,
        )
    if diverged:
        raise UserError(
            f"gan.stop_on_divergence: stopped at step {step} with a checkpoint in {run_dir} (see the warning "
            "above for the numbers and what to change)",
            every_rank=True,
        )


def data_ended(cfg: RootConfig, run_dir: Path, step: int) -> str:
    return (
        f"data ran out at step {step} after {cfg.data.num_epochs} epoch(s) (data.num_epochs={cfg.data.num_epochs}), "
        f"before train.max_steps={cfg.train.max_steps}; "
        + (f"checkpoint of step {step} in {run_dir}" if step > 0 else "nothing was trained")
    )


def say(rank: int, message: str) -> None:
    """One line from rank 0 (the run's own news, beside the metrics file)."""
    if rank == 0:
        print(f"[ard_scale] {message}", file=sys.stderr, flush=True)


def summary(cfg: RootConfig, run_dir: Path, ckpt: CheckpointManager, step: int) -> str:
    """Where a run's outputs are, and the command that exports it."""
    lines = [
        f"run at step {step} of {cfg.train.max_steps}: {run_dir}",
        f"  checkpoints  {ckpt.dir} (latest: {ckpt.latest_tag()})",
        f"  metrics      {run_dir / 'metrics.jsonl'} (drawn: {run_dir / 'metrics.png'})",
    ]
    if cfg.eval.every is not None:
        lines.append(f"  eval grids   {run_dir / 'eval' / 'grids'}")
    if cfg.log.tensorboard:
        lines.append(f"  tensorboard  tensorboard --logdir {run_dir / 'tensorboard'}")
    lines.append(f"  export       {launcher_command(cfg, run_dir)}   (then ARDPipeline.from_pretrained)")
    return "\n".join(lines)


def quiet_library_warnings() -> None:
    """DeepSpeed's ZeRO-3 calls two deprecated torch collectives on every step (119 FutureWarnings in 30 steps over
    the progress bar): ignored, since they are DeepSpeed's calls, not ours (our own are fixed at the source). Not
    "once": every `warnings.catch_warnings` in torch or DeepSpeed clears the once-registry, so they came back. And
    DeepSpeed's LR schedules ask themselves for a learning rate as they are built, which logs "Attempting to get
    learning rate from scheduler before it has started" on every rank of every run with a schedule: dropped too."""
    for name in ("reduce_scatter_tensor", "all_gather_into_tensor"):
        message = rf"`torch\.distributed\.{name}` is deprecated"
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    from deepspeed.utils import logger

    if _schedule_not_started not in logger.filters:
        logger.addFilter(_schedule_not_started)


def _schedule_not_started(record: logging.LogRecord) -> bool:
    return "Attempting to get learning rate from scheduler before it has started" not in record.getMessage()


STOPPED = "stopped"  # what draw_micro_batches answers when a stop signal took a rank's data workers


def draw_micro_batches(
    batches, grad_accum: int, dropped: SkipCounter, stop: StopSignal | None = None
) -> tuple[list[dict], int] | None | str:
    """The step's `grad_accum` micro-batches and their number of samples summed over ranks, None on every rank
    once any rank's data has ended, or STOPPED on every rank once a draw failed on some rank after a stop signal (a
    job-wide SIGTERM kills the DataLoader workers too: see ard_scale/trainer/stop.py). Collective (one small
    all-reduce per micro-batch): every rank draws the same number of batches, so ranks stay in lockstep whatever
    their data does. A micro-batch with no valid sample on any rank (an all-corrupt MDS batch) is drawn again on
    every rank; the other ranks' samples of that draw are counted in `dropped`."""
    micro: list[dict] = []
    total = 0
    while len(micro) < grad_accum:
        failed = False
        try:
            batch = next(batches, None)
        except RuntimeError:  # torch's "DataLoader worker ... exited unexpectedly"
            if stop is None or not stop.received:
                raise
            batch, failed = None, True
        n = 0 if batch is None else num_samples(batch)
        agreed = sum_over_ranks(
            {
                "stopped": failed,
                "ended": batch is None and not failed,
                "empty": batch is not None and n == 0,
                "samples": n,
            }
        )
        if agreed["stopped"]:
            return STOPPED
        if agreed["ended"]:
            return None
        if agreed["empty"]:
            if n:
                dropped.counts["dropped: another rank's micro-batch had no valid sample"] += n
            continue
        micro.append(batch)
        total += agreed["samples"]
    return micro, total


def num_samples(batch: dict) -> int:
    """Samples in a batch: image batches carry `keys`, offline trajectory batches `seeds`."""
    return len(batch["keys"]) if "keys" in batch else len(batch["seeds"])


def check_reachable(cfg: RootConfig, max_batches: int | None, rank: int, world: int, start: int = 0) -> None:
    """ConfigError on every rank when train.max_steps cannot be reached: `max_batches` is this rank's upper bound on
    the batches its finite data yields (None: unbounded), `start` the steps already taken on a stream that restarts.
    Collective."""
    mine = -1 if max_batches is None else max_batches
    everyone = sum_over_ranks({f"{i:06d}": mine if i == rank else 0 for i in range(world)}).values()
    if min(everyone) < 0:  # a stream without end
        return
    reachable = start + min(everyone) // cfg.train.grad_accum
    if reachable < cfg.train.max_steps:
        raise ConfigError(
            "(the data)",
            [
                f"train.max_steps: {cfg.train.max_steps} steps cannot be reached: data.num_epochs="
                f"{cfg.data.num_epochs} of data.path={cfg.data.path!r} gives at most {reachable} steps of "
                f"data.batch_size={cfg.data.batch_size} × train.grad_accum={cfg.train.grad_accum} on {world} ranks; "
                "lower train.max_steps, raise data.num_epochs, or set it to null (stream forever)"
            ],
            every_rank=True,
        )


def all_finite(record: dict) -> bool:
    """No NaN or ±Inf among a record's numbers (also inside lists)."""
    values = [v for value in record.values() for v in (value if isinstance(value, list) else [value])]
    return all(math.isfinite(v) for v in values if isinstance(v, float))


def _max_mem_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
