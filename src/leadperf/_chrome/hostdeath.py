"""Browsers die with their host: parent-death signal, a watchdog process, signal handlers.

Three layers, each covering what the one before cannot (Linux; elsewhere only the last):

1. chromedriver starts with ``PR_SET_PDEATHSIG`` = SIGKILL, so the kernel kills it when
   the host dies, even by SIGKILL. The kernel sends it when the *thread* that forked the
   child ends, so every chromedriver is forked from one long-lived launcher thread, never
   from a worker thread that may retire.
2. Chrome is chromedriver's child and does not inherit that setting, and its crashpad
   handlers leave the tree. A watchdog process (``watchdog.py``) holds the read end of a
   pipe from the host; when the host is gone the pipe closes, and the watchdog kills each
   instance's process group and every process naming its profile, then removes the
   profiles.
3. SIGTERM and SIGHUP (how Docker, systemd and Kubernetes stop a service; a closed
   terminal) run handlers that close every pool at once and then chain to the host's
   previous handler, so a host's own shutdown logic still runs. SIGINT raises
   KeyboardInterrupt as usual and the ``atexit`` guard closes pools.

The launcher thread and the watchdog run only while a local instance exists.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from types import FrameType
from typing import Any, Protocol, TypeVar

__all__ = [
    "Guarded",
    "forget",
    "guard_until_closed",
    "install_signal_handlers",
    "launch",
    "pdeathsig_preexec",
    "watchdog",
]

_T = TypeVar("_T")
_PR_SET_PDEATHSIG = 1
_HANDLED_SIGNALS = ("SIGTERM", "SIGHUP")


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


# Resolved before any fork: the child must not load libraries between fork and exec.
_prctl = _load_prctl()


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child die by SIGKILL with its parent thread (Linux)."""
    if _prctl is None:
        return None
    parent = os.getpid()
    prctl = _prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_Job = tuple[Callable[[], Any], Future[Any]] | None


class _Launcher:
    """One daemon thread that forks every chromedriver (see layer 1 above).

    It runs while any local instance exists; :meth:`stop` (called once none does) ends it,
    and the next launch starts a new one with a queue of its own.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], _T]) -> _T:
        done: Future[_T] = Future()
        with self._lock:
            if self._jobs is None or self._thread is None or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._loop,
                    args=(self._jobs,),
                    name="leadperf-chrome-launcher",
                    daemon=True,
                )
                self._thread.start()
            self._jobs.put((fn, done))
        return done.result()

    def reset(self) -> None:
        """Forget the thread and lock (after a fork: the child has neither)."""
        self._jobs = self._thread = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        """End the thread once its queued launches ran (only when no chromedriver lives)."""
        with self._lock:
            thread = self._thread
            if self._jobs is not None:
                self._jobs.put(None)
            self._jobs = self._thread = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @staticmethod
    def _loop(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, done = job
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller, which re-raises it
                done.set_exception(exc)


_launcher = _Launcher()
if hasattr(os, "register_at_fork"):
    # A forked child has no launcher thread and must not wait on a lock held at the fork.
    os.register_at_fork(after_in_child=_launcher.reset)


def launch(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` (which forks a process) on the launcher thread and return its result."""
    return _launcher.run(fn)


class _Watchdog:
    """The host's end of the watchdog process: start it once, tell it what to clean."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None  # the pipe's write end, for the after-fork handler
        self._dirs: set[str] = set()  # profiles alive now; at none, the watchdog stops
        self._failed = False

    def register_dir(self, path: str) -> None:
        with self._lock:
            self._dirs.add(path)
            self._send(f"D {path}")

    def register_group(self, pgid: int, path: str) -> None:
        with self._lock:
            self._send(f"G {pgid} {path}")

    def forget(self, path: str) -> None:
        """The instance using ``path`` is torn down; with none left, stop the watchdog.

        Nothing is left running once every pool closed: the watchdog process exits and
        the launcher thread ends (both start again with the next instance).
        """
        # Bounded wait: a teardown never blocks for long on a lock held elsewhere.
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            if path not in self._dirs:
                return
            self._dirs.discard(path)
            self._send(f"- {path}", start=False)
            if not self._dirs:
                self._stop()
        finally:
            self._lock.release()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _send(self, line: str, *, start: bool = True) -> None:
        # Called with self._lock held.
        if os.name != "posix" or "\n" in line:
            return
        if self._process is None and start and not self._failed:
            self._process = self._start()
            if self._process is not None and self._process.stdin is not None:
                self._fd = self._process.stdin.fileno()
        proc = self._process
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode("utf-8", "surrogateescape") + b"\n")
            proc.stdin.flush()
        except OSError:  # the watchdog died: the other layers still hold
            self._process, self._fd, self._failed = None, None, True

    def _stop(self) -> None:
        # Called with self._lock held, once no instance is left: close the pipe (the
        # watchdog sweeps nothing and exits), reap it, end the launcher thread.
        proc, self._process, self._fd = self._process, None, None
        if proc is not None:
            with contextlib.suppress(Exception):
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
        _launcher.stop()

    def _start(self) -> subprocess.Popen[bytes] | None:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.py")
        try:
            # -I -S: standard library only, nothing from the host's environment or site.
            return subprocess.Popen(
                [sys.executable, "-I", "-S", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self._failed = True
            return None

    def _after_fork_in_child(self) -> None:
        # A forked child must not hold the pipe open (the watchdog would outlive the host
        # waiting for it) and owns none of the parent's browsers. Only system calls here:
        # another thread of the parent may have held the pipe's Python-level lock at the
        # fork, so touching the file object could block forever. The pipe's descriptor is
        # replaced by /dev/null, so whatever later closes that number closes /dev/null.
        fd, self._fd = self._fd, None
        self._lock = threading.Lock()
        self._dirs = set()
        if self._process is not None:
            _forked_away.append(self._process)  # never finalized here: it is the parent's
        self._process = None
        if fd is not None:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
            except OSError:
                pass


_forked_away: list[subprocess.Popen[bytes]] = []
_watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watchdog._after_fork_in_child)


def watchdog() -> _Watchdog:
    """The process-wide watchdog handle (started on first registration)."""
    return _watchdog


_installed: dict[int, Any] = {}
_callbacks: list[Callable[[], None]] = []
_install_lock = threading.Lock()


def install_signal_handlers(on_signal: Callable[[], None]) -> None:
    """Run ``on_signal`` on SIGTERM/SIGHUP, then the host's previous handler.

    Installs only from the main thread (Python's rule) and only over a default or Python
    handler: a signal the host ignores stays ignored. Later calls add nothing twice.
    """
    with _install_lock:
        if on_signal not in _callbacks:
            _callbacks.append(on_signal)
        if threading.current_thread() is not threading.main_thread():
            return
        for name in _HANDLED_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None or signum in _installed:
                continue
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue  # ignored, or set outside Python: not ours to override
            _installed[signum] = previous
            signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for callback in list(_callbacks):
        with contextlib.suppress(Exception):
            callback()
    previous = _installed.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        # Die of the same signal, with the exit status a supervisor expects.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class Guarded(Protocol):
    """What the guards need from a pool: a normal close and a lock-free kill."""

    def close(self) -> None: ...

    def _kill_now(self) -> None: ...


_guarded: weakref.WeakSet[Any] = weakref.WeakSet()


def guard_until_closed(resource: Guarded) -> None:
    """Close ``resource`` at exit, kill it on SIGTERM/SIGHUP, until :func:`forget`."""
    _guarded.add(resource)
    install_signal_handlers(_kill_guarded)


def forget(resource: Guarded) -> None:
    """``resource`` closed itself: the guards leave it alone."""
    _guarded.discard(resource)


@atexit.register
def _close_guarded() -> None:
    # Hosts that forget close() must not leave Chrome running after they exit.
    for resource in list(_guarded):
        with contextlib.suppress(Exception):
            resource.close()


def _kill_guarded() -> None:
    # SIGTERM/SIGHUP: the host is being stopped. Kill every browser now, without locks.
    for resource in list(_guarded):
        with contextlib.suppress(Exception):
            resource._kill_now()


def _forget_guarded_after_fork() -> None:
    # A forked child inherits the pool objects but not the browsers' ownership: its exit
    # (atexit) or signals must not kill the parent's browsers.
    _guarded.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_guarded_after_fork)
