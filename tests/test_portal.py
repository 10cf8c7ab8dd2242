"""The shared blocking portal: one loop per process, fresh in a forked child."""

from __future__ import annotations

import multiprocessing
import os
import sys

import anyio
import pytest

from leadperf._portal import get_portal, run_sync


async def _pid_and_thread() -> tuple[int, int]:
    import threading

    await anyio.sleep(0)
    return os.getpid(), threading.get_ident()


def _child(queue: multiprocessing.Queue[object]) -> None:
    try:
        queue.put(run_sync(_pid_and_thread))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put(repr(exc))


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_a_forked_child_gets_a_working_portal_of_its_own() -> None:
    parent_pid, parent_thread = run_sync(_pid_and_thread)
    assert parent_pid == os.getpid()
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    try:
        answer = queue.get(timeout=20)
    finally:
        proc.join(timeout=20)
    assert isinstance(answer, tuple), answer
    child_pid, _ = answer
    assert child_pid == proc.pid != parent_pid
    assert proc.exitcode == 0
    # The parent's portal is untouched by the child.
    assert run_sync(_pid_and_thread) == (parent_pid, parent_thread)
    assert get_portal() is get_portal()
