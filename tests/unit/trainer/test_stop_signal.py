"""Ctrl-C (SIGINT) is a clean stop like SIGTERM and SIGUSR1: it sets the flag the loop checkpoints
on, instead of raising KeyboardInterrupt wherever the process happens to be."""

import os
import signal

import pytest

from ard_scale.trainer.loop import StopSignal


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
