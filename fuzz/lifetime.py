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
* `Lifeline` / `watch_lifeline()` for grandchildren started by programs we do not control
  (libFuzzer's fork mode): they end when the pipe's write end, held by us alone, closes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (`signum`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []          # stop signals received by this process, in order
_quiet_repeat = [False]            # a worker does not announce repeated signals
_holding: list[bool] = []          # inside deferred(): a first signal is noted, not raised


def _on_stop_signal(signum, frame) -> None:
    first = not _received
    _received.append(signum)
    if first and not _holding:
        raise Interrupted(signum)
    if not _quiet_repeat[0]:
        again = "" if first else " again"
        print(f"memslot-fuzz: {signal.Signals(signum).name}{again}: stopping once what was found is "
              "saved and reported (SIGKILL ends at once, losing the report)", file=sys.stderr, flush=True)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise Interrupted once, then are ignored while the run winds up."""
    _received.clear()
    _holding.clear()
    _quiet_repeat[0] = False
    for s in STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)


@contextmanager
def stop_handlers():
    """install_stop_handlers() for the block, the previous handlers after it (main thread only:
    elsewhere Python cannot set handlers and the block runs with the ones it has)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    install_stop_handlers()
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def with_stop_handlers(func):
    """Decorator: run `func` inside stop_handlers()."""
    @functools.wraps(func)
    def run(*args, **kwargs):
        with stop_handlers():
            return func(*args, **kwargs)
    return run


@contextmanager
def deferred():
    """A block that must finish (saving what was found, writing the report): a stop signal
    that arrives inside it is noted (see stop_signal()) instead of raised."""
    _holding.append(True)
    try:
        yield
    finally:
        _holding.pop()


def hold() -> None:
    """From now on (the run is winding up: summary, report) a stop signal is noted, not raised."""
    _holding.append(True)


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


LIFELINE_ENV = "MEMSLOT_FUZZ_LIFELINE"


class Lifeline:
    """For programs that start their own children where we cannot reach (libFuzzer's fork
    mode runs each worker as `sh -c python3 ...`, and a parent death signal would only tie
    the worker to that shell): a pipe whose write end only this process holds.  Descendants
    inherit the read end (`pass_fds`, `env`) and call watch_lifeline(): when this process
    dies, however it dies, the kernel closes the write end and every one of them ends."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()      # neither is inherited unless passed

    def env(self) -> dict[str, str]:
        return {LIFELINE_ENV: str(self.read_fd)}

    def started(self) -> None:
        """The child has it now: this process keeps only the write end."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def close(self) -> None:
        """End every process still watching (the program has ended; stragglers go too)."""
        self.started()
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1


def watch_lifeline(env=None) -> bool:
    """In a process started under a Lifeline: SIGKILL this process once the lifeline's owner
    is gone.  False if there is no lifeline in the environment."""
    raw = (os.environ if env is None else env).get(LIFELINE_ENV, "")
    if not raw.isdigit():
        return False
    fd = int(raw)

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="memslot-fuzz-lifeline", daemon=True).start()
    return True


def preexec_die_with_parent(parent_pid: int):
    """A subprocess.Popen preexec_fn: die_with_parent in the child between fork and exec
    (the death signal survives exec)."""
    def setup() -> None:
        die_with_parent(parent_pid)
    return setup
