"""Stopping cleanly: SIGTERM, SIGUSR1 (Slurm's pre-emption warning) and SIGINT (Ctrl-C) set a flag that the loop
checkpoints on and exits, wherever the rank was when they came.

A job-wide SIGTERM (Slurm's time limit, `scancel`, pre-emption: every process of the job is signalled) also reaches
the rank's DataLoader workers, and torch's worker dies of a SIGTERM its parent did not send. torch's SIGCHLD handler
in the rank would then raise "DataLoader worker ... is killed by signal: Terminated" inside whatever the rank was
doing (a step, a collective, the save), and the stop would lose its checkpoint. So `StopSignal` takes over that
SIGCHLD check: a worker terminated by SIGTERM counts as a stop signal, any other worker death still raises as torch's
check does; and a draw from the loader that fails after a stop counts as the stop (`draw_micro_batches`), with the
data position rewound to the step's start (`DataPosition`), so the micro-batches drawn for the unfinished step are
drawn again on resume.

`StopSignal` is made first thing in a launcher (`launchers/train.py`, before it reads the recipe or imports torch): a
signal that comes while the rank starts would else be lost, ignored where the launcher ignores it (the Slurm script's
torchrun ignores USR1, and its ranks inherit that until a handler is set) or ending the rank unsaved. A signal that
came before the ranks existed is passed to them as ARD_STOP_AT_START=1 (the Slurm script's USR1 before its training
step started): the flag starts set.
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignal:
    """The stop flag (`received`) and the handlers that set it. `restore()` puts the previous handlers back."""

    def __init__(self):
        self.received = os.environ.get("ARD_STOP_AT_START") == "1"  # the stop came before this process did
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        from torch.utils.data._utils import signal_handling as worker_signals  # torch once the handlers are set

        # In place of torch's SIGCHLD handler, which a multi-worker DataLoader installs once per process unless this
        # flag says one is there (it would raise before any later handler ran).
        self._torch_had_handler = worker_signals._SIGCHLD_handler_set
        worker_signals._SIGCHLD_handler_set = True
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._child_exited)

    def restore(self) -> None:
        from torch.utils.data._utils import signal_handling as worker_signals

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        worker_signals._SIGCHLD_handler_set = self._torch_had_handler

    def _handle(self, signum, frame):
        self.received = True

    def _child_exited(self, signum, frame):
        from torch.utils.data._utils import signal_handling as worker_signals

        try:
            worker_signals._error_if_any_worker_fails()  # torch's check of the DataLoader workers it registered
        except RuntimeError as e:
            if "killed by signal: Terminated" not in str(e):
                raise
            self.received = True
        previous = self._previous[signal.SIGCHLD]
        if callable(previous) and not self._torch_had_handler:  # torch's own would raise for the same worker
            previous(signum, frame)


class DataPosition:
    """The loader's position as the checkpoint tracks it: its own, or the one it had when the current step began
    drawing (`rewind`), once a stop cut that step's draws short (its drawn micro-batches were never trained on)."""

    def __init__(self, loader):
        self.loader = loader
        self.step_start: dict | None = None
        self.rewound = False

    def mark(self) -> None:
        """Called before each step's draws."""
        self.step_start = self.loader.state_dict()

    def rewind(self) -> None:
        self.rewound = self.step_start is not None

    def state_dict(self) -> dict:
        return self.step_start if self.rewound else self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
