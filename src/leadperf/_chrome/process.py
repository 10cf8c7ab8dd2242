"""Process launch and teardown for local instances: chromedriver, Chrome and what they fork.

chromedriver runs in a session of its own, so its process group holds Chrome and every
process Chrome forks, except the crashpad handlers, which start sessions of their own.
Each instance gets a fresh profile directory that appears on the command line of every
Chrome process (crashpad's database is pointed into it), and a ``TMPDIR`` inside it, so
chromedriver's ``scoped_dir*`` and Chrome's ``org.chromium.Chromium.*`` temp dirs go
with the profile. Teardown kills the group, then sweeps any process still naming the
profile, then removes it. :mod:`.hostdeath` covers a host that dies without tearing down.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from .hostdeath import launch, pdeathsig_preexec, watchdog
from .ports import release_port, reserve_port

__all__ = ["LocalProcesses", "alive", "find_browser", "teardown"]

_EXIT_WAIT_S = 10.0
# Chrome puts its singleton socket at <TMPDIR>/org.chromium.Chromium.XXXXXX/SingletonSocket,
# and a Unix socket path holds at most 107 bytes: leave room for that tail.
_SOCKET_TAIL = len("/t/org.chromium.Chromium.XXXXXX/SingletonSocket")
_UNIX_PATH_MAX = 107


class LocalProcesses:
    """The profile, ports and chromedriver process of one local instance."""

    def __init__(self) -> None:
        self.user_data_dir = tempfile.mkdtemp(prefix="leadperf-chrome-", dir=_profile_parent())
        # Registered before anything starts, so a host dying from here on leaves nothing.
        watchdog().register_dir(self.user_data_dir)
        self.tmp_dir = os.path.join(self.user_data_dir, "t")
        os.mkdir(self.tmp_dir)
        self.driver_port = reserve_port()
        self.debug_port = reserve_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.browser: psutil.Process | None = None
        self._kill_lock = threading.Lock()

    def chrome_args(self) -> list[str]:
        """The flags this instance owns: its profile and its DevTools port."""
        return [
            f"--user-data-dir={self.user_data_dir}",
            f"--remote-debugging-port={self.debug_port}",
        ]

    def service(self, driver_path: str) -> Any:
        """A selenium chromedriver ``Service`` that starts under the host-death guards."""
        env = dict(os.environ)
        env["TMPDIR"] = self.tmp_dir
        # Crashpad's handler double-forks away from Chrome; pointing its database into the
        # profile puts the profile path on its command line, so teardown finds it too.
        env["BREAKPAD_DUMP_LOCATION"] = os.path.join(self.user_data_dir, "crash")
        popen_kw: dict[str, Any] = {}
        if os.name == "posix":
            popen_kw["start_new_session"] = True
            preexec = pdeathsig_preexec()
            if preexec is not None:
                popen_kw["preexec_fn"] = preexec
        return _service_class()(
            executable_path=driver_path,
            port=self.driver_port,
            env=env,
            popen_kw=popen_kw,
            on_started=self._started,
        )

    def _started(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        watchdog().register_group(process.pid, self.user_data_dir)

    def find_browser(self) -> None:
        """Find the Chrome browser process among chromedriver's children."""
        if self.process is not None:
            self.browser = find_browser(self.process.pid, self.user_data_dir)

    def kill(self) -> None:
        """SIGKILL chromedriver, Chrome and every process they forked; reap chromedriver.

        Lock-free callers (a signal handler) use :func:`teardown` directly.
        """
        with self._kill_lock:
            teardown(self.process, self.user_data_dir, remove_dir=False)

    def remove(self) -> None:
        """Kill everything, remove the profile and give the ports back."""
        self.kill()
        self.remove_files()

    def remove_files(self) -> None:
        """Remove the profile (and the temp dirs inside it) and free the ports."""
        shutil.rmtree(self.user_data_dir, ignore_errors=True)
        watchdog().forget(self.user_data_dir)
        release_port(self.driver_port)
        release_port(self.debug_port)


def _profile_parent() -> str | None:
    """Where profiles go: the temp dir, unless its path is too long for Chrome's socket."""
    parent = tempfile.gettempdir()
    if len(parent) + len("/leadperf-chrome-XXXXXXXX") + _SOCKET_TAIL <= _UNIX_PATH_MAX:
        return None
    if os.name == "posix" and os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return None


@functools.cache
def _service_class() -> type[Any]:
    from selenium.webdriver.chrome.service import Service

    class PooledService(Service):
        """chromedriver forked from the launcher thread (see hostdeath: parent-death signal)."""

        def __init__(
            self, *args: Any, on_started: Callable[[subprocess.Popen[bytes]], None], **kw: Any
        ) -> None:
            super().__init__(*args, **kw)
            self._on_started = on_started

        def _start_process(self, path: str) -> None:
            launch(lambda: Service._start_process(self, path))
            if self.process is not None:
                self._on_started(self.process)

    return PooledService


def kill_service(service: Any) -> None:
    """Kill a chromedriver that did not start in time (a start-deadline timer)."""
    process = getattr(service, "process", None)
    if process is not None:
        teardown(process, None, remove_dir=False)


def find_browser(driver_pid: int, user_data_dir: str) -> psutil.Process | None:
    """The Chrome browser process started by chromedriver ``driver_pid`` with this profile."""
    try:
        for child in psutil.Process(driver_pid).children():
            if any(user_data_dir in arg for arg in child.cmdline()):
                return child
    except psutil.Error:
        return None
    return None


def teardown(
    process: subprocess.Popen[bytes] | None,
    user_data_dir: str | None,
    *,
    remove_dir: bool = True,
    forget: bool = True,
) -> None:
    """Kill chromedriver's group and anything naming ``user_data_dir``; wait until gone."""
    killed: list[psutil.Process] = []
    if process is not None and process.poll() is None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(process.pid)
            killed = [root, *root.children(recursive=True)]
        # The group id is chromedriver's pid, which cannot be reused before we reap it.
        # Once reaped, its Chrome (if any) is found by the profile sweep below.
        with contextlib.suppress(OSError):
            if os.name == "posix":
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
    if user_data_dir:
        # Anything that left the group (a crashpad handler, a reparented child) still
        # names the profile directory on its command line.
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or ()
            if any(user_data_dir in arg for arg in cmdline):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    killed.append(proc)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            process.wait(timeout=_EXIT_WAIT_S)
    # SIGKILL is delivered at once but a process takes a moment to exit (freeing its
    # memory, finishing a disk write): return only when every one of them is gone.
    deadline = time.monotonic() + _EXIT_WAIT_S
    while any(alive(proc) for proc in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    if remove_dir and user_data_dir:
        shutil.rmtree(user_data_dir, ignore_errors=True)
        if forget:
            watchdog().forget(user_data_dir)


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds nothing; its parent or init reaps it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
