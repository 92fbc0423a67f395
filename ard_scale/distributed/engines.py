"""The only place that calls `deepspeed.initialize` (DESIGN.md §2 "Several models in one process under ZeRO-3").

- the student: a training engine with its optimizer, ZeRO stage from the recipe;
- the teacher (and T5): frozen inference engines with no optimizer, ZeRO-3 partitioned;
- `gather_once(engine)`: a context that materialises a frozen ZeRO-3 engine's parameters once, e.g. around a whole
  teacher ODE loop, instead of once per solver step.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys

import torch

from ard_scale.errors import UserError

# What torchrun, the deepspeed launcher and Slurm's torchrun agents set for each rank; MPI launchers set their own.
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")

# Test-only: set to 1 (tests/conftest.py does, for the whole session and every rank it launches) to make ZeRO-3
# partition every parameter. DeepSpeed keeps parameters under `stage3_param_persistence_threshold` (1e5 elements)
# whole on every rank, and the tests' tiny models are mostly under it, so their forwards need no all-gather and a
# forward run on one rank only (or a different number of times per rank) passes there but hangs a real run.
PARTITION_ALL_ENV = "ARD_SCALE_TEST_ZERO3_PARTITION_ALL"


def _one_process_env() -> None:
    """`python launchers/train.py RECIPE` with no launcher: one rank on this host. Without this, DeepSpeed takes
    the missing RANK for an MPI launch and fails with "No module named 'mpi4py'".

    Tasks that `srun` started directly (`srun --ntasks=N python launchers/train.py`) have no launcher environment
    either, but they are N processes: each would have become a 1-rank run of its own in the same run directory (one
    trained alone on 1/N of the job, the others stopped on the run lock with "in use by another training run"). They
    are refused, every task alike, naming the launch that works."""
    if any(k in os.environ for k in _LAUNCHER_ENV + _MPI_ENV):
        return
    num_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))  # set by srun in a job step, not in a batch script
    if num_tasks > 1:
        raise UserError(
            f"started as Slurm task {os.environ.get('SLURM_PROCID', '?')} of {num_tasks} by srun, with no RANK or "
            "WORLD_SIZE: each task would train alone as a 1-rank run in the same run directory. Start the ranks with "
            "torchrun, one srun task per node: sbatch launchers/slurm/train.sbatch RECIPE does (or `srun "
            "--ntasks-per-node=1 python -m torch.distributed.run --nnodes N --nproc_per_node G --master_addr HOST "
            "--master_port PORT --node_rank $SLURM_NODEID launchers/train.py RECIPE`)",
            every_rank=True,
        )
    from ard_scale.utils.launch import free_port

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def _share_cores_between_local_ranks() -> None:
    """This rank's share of the host's cores for torch's CPU threads, when nobody chose a number (OMP_NUM_THREADS).
    torchrun sets OMP_NUM_THREADS=1 for more than one rank per host, but the deepspeed launcher sets nothing (without
    --bind_cores_to_rank), so each of its ranks ran as many threads as the host has cores: G ranks oversubscribed the
    CPU G times over in everything the ranks compute there (an offloaded optimizer's step, the data, the EMA)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)  # torchrun, deepspeed
    if "OMP_NUM_THREADS" in os.environ or local_ranks <= 1:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // local_ranks)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # what this rank's own child processes inherit
    torch.set_num_threads(threads)


def init_distributed() -> tuple[int, int]:
    """Process group from the torchrun / deepspeed launcher environment (gloo without CUDA), or of one process when
    started without a launcher. (rank, world_size).

    The group is destroyed at interpreter exit: a process that ends with a live gloo group can abort in finalisation
    ("terminate called without an active exception", SIGABRT) when a gloo worker thread still holds a finished
    collective's tensors, turning a run that succeeded into a failed one (pytorch/pytorch#190489)."""
    import deepspeed

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.getcwd(), ".torch_extensions"))
    _one_process_env()
    _share_cores_between_local_ranks()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(_destroy_process_group)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def finish_process(code: int = 0) -> None:
    """End a rank that has finished its work with exit status `code`, without interpreter finalisation.

    `destroy_process_group` (run by the atexit handler above) drops torch's references to the gloo groups, but
    DeepSpeed keeps its own (its data-parallel and ZeRO partition groups), so the groups' C++ worker threads can
    still be torn down during finalisation and abort the process ("terminate called without an active exception",
    SIGABRT): a run that completed and saved everything then exits -6 and torchrun reports it failed. Seen once in
    ~45 launches of the test suite with two files running at once. Here the atexit handlers run (the group is
    destroyed, logging flushed), stdout and stderr are flushed, and the process ends with `os._exit`, before any
    object is finalised. Callers close their files first (the trainer closes its metrics log and checkpoints are
    written and fsynced before this)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def student_ds_config(
    *,
    micro_batch: int,
    grad_accum: int = 1,
    lr: float = 1e-4,
    betas=(0.9, 0.999),
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    zero_stage: int = 3,
    precision: str = "fp32",
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict:
    """The student engine's DeepSpeed config. `offload_optimizer`/`offload_params` (zero.offload_*) keep the optimizer
    state / the parameters in CPU memory. The optimizer is torch's AdamW either way, stepping the state where it
    lies: DeepSpeed's CPU Adam would step offloaded state faster, but its checkpointed state is not AdamW's (a run
    could not switch offload on or off on resume, which the recipe check allows) and its numbers differ slightly."""
    zero: dict = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(betas),
                "weight_decay": weight_decay,
                "torch_adam": True,
            },
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        # grad_accum > 1: the trainer owns the boundary (backward per micro-batch, one step()), so a step whose
        # micro-batch had a non-finite loss can leave that micro-batch out or skip the update without desynchronising
        # DeepSpeed's micro-step counter
        **({"managed_gradient_accumulation": False} if grad_accum > 1 else {}),
    }


def replicated_grad_norm(engine) -> float | None:
    """The global gradient 2-norm of a ZeRO stage 0 student before its step: DeepSpeed reports none there (its fp32
    clipping discards the norm). Call after the step's last backward, before `engine.step()`; the gradients are then
    averaged over ranks (in the boundary backward, or here when the trainer owns accumulation: averaging equal
    gradients again leaves them unchanged), so every rank gets the same number. None at stages 1-3, where
    `engine.get_global_grad_norm()` gives it after the step."""
    if engine.zero_optimization_stage() != 0:
        return None
    if not engine.managed_gradient_accumulation():
        engine.allreduce_gradients()
    norms = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def step_student(engine) -> float | None:
    """`engine.step()` after the step's last backward, unless the gradient is not finite; returns the global gradient
    norm (None where DeepSpeed reports none). DeepSpeed skips a step whose gradient norm is NaN/Inf itself at ZeRO
    stages 1-3 and in bf16/fp16 (its overflow check), but a stage 0 fp32 engine clips by that norm and its optimizer
    writes NaN into the weights (and from them into every later loss, the EMA and the next checkpoint): there the
    gradients are dropped and the update skipped the same way (the LR schedule does not advance). Every rank sees the
    same norm (`replicated_grad_norm`), so all skip together."""
    norm = replicated_grad_norm(engine)
    if norm is not None and not math.isfinite(norm) and not (engine.bfloat16_enabled() or engine.fp16_enabled()):
        engine.zero_grad()
        return norm
    engine.step()
    return engine.get_global_grad_norm() if norm is None else norm


def reapply_optimizer_settings(engine, *, lr: float, betas, weight_decay: float) -> None:
    """Put this run's optimizer settings back after a resume: DeepSpeed's `load_checkpoint` restores the saved
    param_groups with the Adam moments, so a train.lr, train.betas or train.weight_decay changed on resume (under
    checkpoint.allow_recipe_change, as the NaN stop advises for train.lr) silently did nothing. The learning rate is
    the LR schedule's at its restored step where there is one (its own settings are this run's), else `lr`; an
    unchanged recipe gets back exactly the values it saved."""
    groups = engine.optimizer.param_groups
    scheduler = getattr(engine, "lr_scheduler", None)
    lrs = scheduler.get_lr() if scheduler is not None else [lr] * len(groups)
    for group, group_lr in zip(groups, lrs, strict=True):
        group.update(lr=group_lr, betas=tuple(betas), weight_decay=weight_decay)


def frozen_ds_config(*, micro_batch: int, zero_stage: int = 3, precision: str = "fp32") -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
    }


def partition_all_in_tests(config: dict) -> dict:
    """`config` with ZeRO-3 partitioning every parameter (persistence threshold 0) when the test-only
    ARD_SCALE_TEST_ZERO3_PARTITION_ALL=1 is set and the config sets no threshold of its own; else `config` itself.
    Real runs never set it: their defaults are DeepSpeed's."""
    zero = config.get("zero_optimization", {})
    if os.environ.get(PARTITION_ALL_ENV) != "1" or zero.get("stage") != 3:
        return config
    return {**config, "zero_optimization": {"stage3_param_persistence_threshold": 0, **zero}}


def build_student_engine(student: torch.nn.Module, config: dict):
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(
        model=student,
        model_parameters=[p for p in student.parameters() if p.requires_grad],
        config=partition_all_in_tests(config),
    )
    return engine, optimizer


def build_frozen_engine(module: torch.nn.Module, config: dict):
    """A frozen model as a DeepSpeed engine with no optimizer (ZeRO-3: parameters partitioned across ranks)."""
    import deepspeed

    module.requires_grad_(False).eval()
    engine, *_ = deepspeed.initialize(model=module, config=partition_all_in_tests(config))
    return engine


def gather_once(engine) -> contextlib.AbstractContextManager:
    """Materialise all of a ZeRO-3 model's parameters for the duration of the block (read-only): a frozen engine's,
    or a module's whose parameters another engine partitions (the teacher inside a LoRA student's engine). The
    forwards inside the block then fetch nothing (see `_gathered_and_held`)."""
    params = list(getattr(engine, "module", engine).parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    return _gathered_and_held(params)


_HELD_BY_GATHER_ONCE = -1  # in a parameter's ds_active_sub_modules: no module's ds_id (those count from 0)


@contextlib.contextmanager
def _gathered_and_held(params: list):
    """`GatheredParameters` alone does not survive a forward: DeepSpeed's ZeRO-3 hooks release (re-partition) every
    submodule's parameters after its forward, so the first solver step gave them back and every later one gathered
    them again, the full all-gather on entry paid on top. A parameter stays resident while some submodule still
    uses it (`ds_active_sub_modules`): the block holds each one that way, then lets go before they are
    re-partitioned on exit."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for p in params:
            p.ds_active_sub_modules.add(_HELD_BY_GATHER_ONCE)
        try:
            yield
        finally:
            for p in params:
                p.ds_active_sub_modules.discard(_HELD_BY_GATHER_ONCE)
