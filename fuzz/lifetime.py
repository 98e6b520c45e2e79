"""How a run ends: SIGINT and SIGTERM stop it cleanly, and worker processes never outlive it.

* `install_stop_handlers()` (memslot-fuzz's main) turns the first SIGINT or SIGTERM into an
  `Interrupted` exception.  It is a KeyboardInterrupt, so every engine's existing "stop
  cleanly" path (save, summarize, report) handles both signals alike; `exit_code()` is then
  128 + the signal's number (130, 143).  Further signals while the run is saving and
  reporting are noted and ignored, so the report is not lost to an impatient second Ctrl-C
  (SIGKILL still ends everything at once).
* `die_with_parent(parent_pid)` in a worker right after fork: the kernel sends the worker
  SIGKILL when its parent dies, however it dies (prctl PR_SET_PDEATHSIG, Linux only), and a
  parent that died before the prctl took effect is caught by comparing getppid().
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (`signum`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []          # stop signals received by this process, in order
_quiet_repeat = [False]            # a worker does not announce repeated signals


def _on_stop_signal(signum, frame) -> None:
    first = not _received
    _received.append(signum)
    if first:
        raise Interrupted(signum)
    if not _quiet_repeat[0]:
        print(f"memslot-fuzz: {signal.Signals(signum).name} again: still saving and reporting "
              "(SIGKILL ends at once, losing the report)", file=sys.stderr, flush=True)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise Interrupted once, then are ignored while the run winds up."""
    _received.clear()
    _quiet_repeat[0] = False
    for s in STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)


def stop_signal() -> int | None:
    """The first stop signal this process received, if any."""
    return _received[0] if _received else None


def exit_code(default: int = 130) -> int:
    """The exit code of an interrupted run: 128 + the first stop signal (130 for Ctrl-C)."""
    s = stop_signal()
    return 128 + s if s is not None else default


def worker_signals() -> None:
    """In a forked worker: the stop handlers as inherited, with no signal received yet, and
    quiet about repeats (the parent passes on a signal the terminal already sent)."""
    _received.clear()
    _quiet_repeat[0] = True


_libc = None


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; if the parent is already
    gone (it died between fork and this call), die now.  parent_pid: the pid the parent had
    before forking (default: the current parent, for processes started by other programs)."""
    global _libc
    expected = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected:
        os.kill(os.getpid(), signal.SIGKILL)


def preexec_die_with_parent(parent_pid: int):
    """A subprocess.Popen preexec_fn: die_with_parent in the child between fork and exec
    (the death signal survives exec)."""
    def setup() -> None:
        die_with_parent(parent_pid)
    return setup
