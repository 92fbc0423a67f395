"""Ctrl-C (SIGINT) is a clean stop like SIGTERM and SIGUSR1: it sets the flag the loop checkpoints
on, instead of raising KeyboardInterrupt wherever the process happens to be."""

import os
import signal

import pytest

from ard_scale.trainer.stop import StopSignal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_set_the_flag_and_do_not_interrupt(sig):
    before = signal.getsignal(sig)
    stop = StopSignal()
    try:
        assert not stop.received
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill returns to Python code
        assert stop.received
    finally:
        stop.restore()
    assert signal.getsignal(sig) == before


def test_torchs_sigchld_check_is_replaced_and_put_back():
    from torch.utils.data._utils import signal_handling

    before, flag = signal.getsignal(signal.SIGCHLD), signal_handling._SIGCHLD_handler_set
    stop = StopSignal()
    try:  # a multi-worker DataLoader must not install torch's own handler over ours (it would raise first)
        assert signal_handling._SIGCHLD_handler_set and signal.getsignal(signal.SIGCHLD) == stop._child_exited
        os.kill(os.getpid(), signal.SIGCHLD)  # no DataLoader worker has failed: nothing happens
        assert not stop.received
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGCHLD) == before and signal_handling._SIGCHLD_handler_set == flag


def test_a_draw_that_fails_after_a_stop_stops_and_rewinds_the_data_position():
    """The job-wide SIGTERM killed a data worker between this step's micro-batches (the e2e case:
    tests/e2e/test_torchrun_stop.py): the draw answers STOPPED, and the checkpointed position is the step's start,
    so a resume draws the step's first micro-batch again."""
    from ard_scale.config import load_config
    from ard_scale.data import build_loader
    from ard_scale.data.samples import SkipCounter
    from ard_scale.trainer.loop import STOPPED, draw_micro_batches
    from ard_scale.trainer.stop import DataPosition

    data = load_config("recipes/tiny_cpu.yaml", ["data.num_workers=0"]).data
    loader = build_loader(data, rank=0, world_size=1)
    stream = iter(loader)
    next(stream)  # step 1's micro-batch

    drawn = []

    def worker_died_after_one_batch():
        drawn.append(next(stream)["keys"])
        yield {"keys": drawn[-1]}
        raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly")  # what torch raises then

    position, stop = DataPosition(loader), StopSignal()
    try:
        position.mark()
        with pytest.raises(RuntimeError, match="exited unexpectedly"):  # no stop signal: a real failure
            draw_micro_batches(worker_died_after_one_batch(), 2, SkipCounter(), stop)
        position.mark()
        drawn_first = loader.state_dict()
        stop.received = True
        assert draw_micro_batches(worker_died_after_one_batch(), 2, SkipCounter(), stop) is STOPPED
        assert loader.state_dict() != drawn_first  # the loader moved on by the micro-batch drawn before the failure
        position.rewind()
        assert position.state_dict() == drawn_first
    finally:
        stop.restore()
    resumed = build_loader(data, rank=0, world_size=1)
    resumed.load_state_dict(position.state_dict())
    assert next(iter(resumed))["keys"] == drawn[-1]  # the micro-batch the stopped step drew and never trained on


def test_the_stop_line_names_a_checkpoint_only_where_there_is_one(tmp_path):
    """A stop signal during the first step's draw (a job-wide SIGTERM as the run starts) saves nothing: the last line
    said 'checkpoint of step 0 in RUN_DIR/checkpoints' all the same."""
    from ard_scale.checkpoint.manager import CheckpointManager
    from ard_scale.trainer.loop import stopped

    ckpt = CheckpointManager(tmp_path, keep_last=1, config_dict={})
    assert stopped(ckpt, 0) == (
        "stop signal at step 0: nothing was trained or saved; rerun the same command to start the run"
    )
    ckpt.dir.mkdir()
    (ckpt.dir / "latest").write_text("step_00000003")  # what a save publishes
    assert stopped(ckpt, 3) == f"stop signal: checkpoint of step 3 in {ckpt.dir}; rerun the same command to resume"


def test_a_stop_that_came_before_the_process_starts_the_flag_set(monkeypatch):
    """launchers/slurm/train.sbatch passes a USR1 that reached it before its training step started as
    ARD_STOP_AT_START=1: the ranks train one step, checkpoint it and stop, rather than train on to the time limit."""
    monkeypatch.setenv("ARD_STOP_AT_START", "1")
    stop = StopSignal()
    stop.restore()
    assert stop.received
    monkeypatch.setenv("ARD_STOP_AT_START", "0")
    stop = StopSignal()
    stop.restore()
    assert not stop.received
