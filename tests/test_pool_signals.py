"""Browsers die with their host: a host process holding a pool is ended by each signal.

Each test starts a real host process (a Python child) with a pool of one and a page open,
ends it with SIGTERM, SIGHUP, SIGINT or SIGKILL, and then looks at what is left: every
process the pool started (chromedriver, Chrome, its zygotes and renderers, and the
crashpad handlers that leave the process tree), the profile directory and the temp dirs
Chrome and chromedriver create.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.chrome

_HOST = """
import json, os, signal, sys, time
import psutil
from leadperf._chrome.hostdeath import watchdog
from leadperf.pool import ChromePool

if os.environ.get("HOST_IGNORES_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("HOST_HANDLER"):
    # The host's own shutdown logic, installed before the pool: it must still run.
    def on_hup(signum, frame):
        print("host handler ran", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGHUP, on_hup)

pool = ChromePool(pool_size=1, chrome_binary=sys.argv[1], driver_path=sys.argv[2])
driver = pool.acquire("held")
driver.get("data:text/html,<title>held</title>")
child = None
fork_for = os.environ.get("FORK_CHILD")
if fork_for is not None:
    # A forked child (a worker of the host's) must neither keep the watchdog waiting nor
    # close the parent's pools when it exits.
    child = os.fork()
    if child == 0:
        time.sleep(float(fork_for))
        sys.exit(0)
    if float(fork_for) == 0:
        os.waitpid(child, 0)
        child = None
        driver.get("data:text/html,<title>after fork</title>")
        assert driver.title == "after fork", driver.title
inst = pool.stats().instances[0]
browser = psutil.Process(inst.browser_pid)
profile = next(a.split("=", 1)[1] for a in browser.cmdline() if a.startswith("--user-data-dir="))
pids = {inst.driver_pid}
pids.update(p.pid for p in psutil.Process(inst.driver_pid).children(recursive=True))
crashpad = []
for proc in psutil.process_iter(["cmdline"]):
    argv = proc.info["cmdline"] or [""]
    if any(profile in arg for arg in argv):
        pids.add(proc.pid)
        if argv[0].endswith("chrome_crashpad_handler"):
            crashpad.append(proc.pid)
print(json.dumps({
    "pids": sorted(pids),
    "crashpad": crashpad,
    "profile": profile,
    "temp": sorted(os.listdir(os.path.join(profile, "t"))),
    "watchdog": watchdog().pid,
    "child": child,
}), flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """The host's TMPDIR: short, since Chrome's socket path inside it must fit 107 bytes."""
    path = tempfile.mkdtemp(prefix="lp-host-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _naming(profile: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(profile in arg for arg in proc.info["cmdline"] or ()) and _running(proc.pid):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _leftovers(info: dict[str, Any]) -> tuple[list[int], bool]:
    pids = [pid for pid in info["pids"] if _running(pid)]
    pids += [pid for pid in _naming(info["profile"]) if pid not in pids]
    return pids, os.path.exists(info["profile"])


def _start_host(
    chrome_paths: tuple[str, str], tmp_path: Path, **env: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    # The host's own TMPDIR is the test's: a temp dir Chrome or chromedriver created
    # outside the profile would show up there.
    host_env = {**os.environ, "TMPDIR": str(tmp_path), **env}
    host = subprocess.Popen(
        [sys.executable, "-c", _HOST, *chrome_paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=host_env,
    )
    assert host.stdout is not None
    line = host.stdout.readline()
    if not line:
        host.kill()
        raise AssertionError(f"the host did not start: {host.communicate(timeout=30)[1]}")
    info: dict[str, Any] = json.loads(line)
    assert len(info["pids"]) >= 4, "chromedriver, Chrome and its helpers were running"
    assert info["crashpad"], "Chrome's crashpad handlers, outside the tree, were running"
    assert any(n.startswith("org.chromium.Chromium.") for n in info["temp"])
    assert any("scoped_dir" in n for n in info["temp"]), "chromedriver's temp dir"
    return host, info


def _end_host(
    host: subprocess.Popen[str], info: dict[str, Any], signum: int, tmp_path: Path
) -> tuple[int, float, list[int], bool]:
    started = time.monotonic()
    host.send_signal(signum)
    code = host.wait(timeout=60)
    assert host.stdout is not None
    assert host.stderr is not None
    host.stdout.close()
    host.stderr.close()
    # What is left the moment the host is gone (graceful paths clean up before exiting).
    at_exit, profile_at_exit = _leftovers(info)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids, profile_left = _leftovers(info)
        if not pids and not profile_left and not _running(info["watchdog"]):
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    pids, profile_left = _leftovers(info)
    assert pids == [], f"processes left after the host died: {pids}"
    assert not profile_left, "the profile (and the temp dirs in it) was removed"
    assert list(tmp_path.iterdir()) == [], "no temp dir outside the profile"
    assert not _running(info["watchdog"]), "the watchdog exits once it has swept"
    return code, elapsed, at_exit, profile_at_exit


def test_sigterm_closes_pools_then_dies_of_sigterm(
    chrome_paths: tuple[str, str], tmp_path: Path, reliability: Any
) -> None:
    host, info = _start_host(chrome_paths, tmp_path, FORK_CHILD="0")
    code, elapsed, at_exit, profile_at_exit = _end_host(host, info, signal.SIGTERM, tmp_path)
    assert code == -signal.SIGTERM, "the default action ran after the pools closed"
    assert at_exit == [], "closed before the host exited"
    assert not profile_at_exit
    reliability.record(
        "chrome",
        "SIGTERM to the host holding a pool of 1 with a page open",
        "every browser, driver, crashpad handler and temp dir gone; host dies of SIGTERM",
        f"{len(info['pids'])} processes ({len(info['crashpad'])} crashpad) and "
        f"{len(info['temp'])} temp dirs before; 0 left when the host exited "
        f"(exit {code}); all gone {elapsed:.2f}s after the signal",
    )


def test_sighup_runs_the_hosts_own_handler_after_closing(
    chrome_paths: tuple[str, str], tmp_path: Path, reliability: Any
) -> None:
    host, info = _start_host(chrome_paths, tmp_path, HOST_HANDLER="1")
    code, elapsed, at_exit, profile_at_exit = _end_host(host, info, signal.SIGHUP, tmp_path)
    assert code == 3, "the host's previous SIGHUP handler ran and chose the exit code"
    assert at_exit == []
    assert not profile_at_exit
    reliability.record(
        "chrome",
        "SIGHUP to a host with its own SIGHUP handler",
        "pools closed first, then the host's handler runs",
        f"{len(info['pids'])} processes before; 0 when the host exited; the host's "
        f"handler ran (exit {code}); all gone {elapsed:.2f}s after the signal",
    )


def test_a_sigterm_the_host_ignores_stays_ignored(
    chrome_paths: tuple[str, str], tmp_path: Path
) -> None:
    host, info = _start_host(chrome_paths, tmp_path, HOST_IGNORES_TERM="1")
    host.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        host.wait(timeout=1.5)
    pids, profile_left = _leftovers(info)
    assert sorted(pids) == sorted(p for p in info["pids"] if _running(p))
    assert len(pids) == len(info["pids"]), "the pool was left alone"
    assert profile_left
    _end_host(host, info, signal.SIGKILL, tmp_path)


def test_sigint_closes_pools_on_the_way_out(
    chrome_paths: tuple[str, str], tmp_path: Path, reliability: Any
) -> None:
    host, info = _start_host(chrome_paths, tmp_path)
    code, elapsed, at_exit, profile_at_exit = _end_host(host, info, signal.SIGINT, tmp_path)
    assert code != 0, "KeyboardInterrupt ended the host"
    assert at_exit == [], "atexit closed the pool before exit"
    assert not profile_at_exit
    reliability.record(
        "chrome",
        "SIGINT (Ctrl-C) to the host",
        "KeyboardInterrupt as usual; pools closed on the way out",
        f"{len(info['pids'])} processes before; 0 when the host exited (exit {code}); "
        f"all gone {elapsed:.2f}s after the signal",
    )


def test_sigkill_of_the_host_leaves_nothing(
    chrome_paths: tuple[str, str], tmp_path: Path, reliability: Any
) -> None:
    host, info = _start_host(chrome_paths, tmp_path, FORK_CHILD="60")
    assert info["child"] is not None
    try:
        code, elapsed, at_exit, _ = _end_host(host, info, signal.SIGKILL, tmp_path)
    finally:
        os.kill(info["child"], signal.SIGKILL)
    assert code == -signal.SIGKILL
    reliability.record(
        "chrome",
        "SIGKILL of the host (no handler can run), a forked child of it still alive",
        "chromedriver dies with its parent; the watchdog kills Chrome and crashpad, "
        "removes the profile",
        f"{len(info['pids'])} processes ({len(info['crashpad'])} crashpad) before, "
        f"{len(at_exit)} at the host's death; 0 and the profile removed "
        f"{elapsed:.2f}s after the signal",
    )
