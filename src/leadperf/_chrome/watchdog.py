"""The watchdog process: kills a host's browsers and removes their profiles once the host is gone.

Run as a script (standard library only, so it starts in tens of milliseconds and imports
nothing of the host's). The host holds the write end of the watchdog's stdin and tells it,
one line each, what to clean up::

    D <dir>           a profile directory now exists
    G <pgid> <dir>    chromedriver leads process group <pgid>; Chrome runs with profile <dir>
    - <dir>           the host tore that instance down itself: forget it

When stdin reaches end of file (the host exited, however it died: the kernel closes the
pipe even after SIGKILL) or on SIGTERM/SIGHUP, the watchdog kills every process in a
registered group and every process naming a registered profile on its command line
(Chrome's crashpad handlers leave the group and the process tree, but name the profile),
waits until they are gone, removes the directories and exits. It runs in a session of its
own, so a Ctrl-C on the host's terminal does not reach it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator

_EXIT_WAIT_S = 10.0


def _processes() -> Iterator[tuple[int, int, str, bytes]]:
    """(pid, pgid, state, cmdline) of every process, from /proc (none without /proc)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: split after its closing one.
        fields = stat[stat.rfind(b")") + 2 :].split()
        yield int(name), int(fields[2]), fields[0].decode(), cmdline


def sweep(groups: dict[str, int], *, wait_s: float = _EXIT_WAIT_S) -> int:
    """Kill what ``groups`` ({profile dir: pgid or 0}) started, remove the dirs; return kills."""
    me = os.getpid()
    pgids = {pgid for pgid in groups.values() if pgid > 0}
    dirs = [d.encode() for d in groups]
    killed = 0
    for pgid in pgids:  # the groups first: this works without /proc too
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    while True:
        victims = [
            pid
            for pid, pgid, state, cmdline in _processes()
            if pid != me
            and state not in ("Z", "X")  # zombies hold nothing; their parent reaps them
            and (pgid in pgids or any(d in cmdline for d in dirs))
        ]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not victims or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for d in groups:
        shutil.rmtree(d, ignore_errors=True)
    return killed


def main() -> None:
    groups: dict[str, int] = {}

    def finish(*_: object) -> None:
        sweep(groups)
        os._exit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGHUP, finish)
    for raw in sys.stdin.buffer:
        line = raw.rstrip(b"\n").decode("utf-8", "surrogateescape")
        kind, _, rest = line.partition(" ")
        if kind == "D":
            groups.setdefault(rest, 0)
        elif kind == "G":
            pgid, _, path = rest.partition(" ")
            groups[path] = int(pgid)
        elif kind == "-":
            groups.pop(rest, None)
    finish()


if __name__ == "__main__":
    main()
