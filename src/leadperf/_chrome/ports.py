"""Process-wide TCP port reservations for chromedriver and Chrome's remote-debugging port.

The kernel hands out a free ephemeral port (bind to port 0); the reservation set makes
sure two instances of any pool in this process never receive the same number, even when
the first has not bound it yet.
"""

from __future__ import annotations

import socket
import threading

from ..errors import BrowserStartError

__all__ = ["release_port", "reserve_port", "reserved_ports"]

_lock = threading.Lock()
_reserved: set[int] = set()


def reserve_port(host: str = "127.0.0.1") -> int:
    """Return a free TCP port on ``host`` that no other caller in this process holds."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        with _lock:
            if port not in _reserved:
                _reserved.add(port)
                return port
    raise BrowserStartError(
        "no free local TCP port for chromedriver/Chrome; close unused pools or free ports"
    )


def release_port(port: int | None) -> None:
    """Give ``port`` back once the process that listened on it is gone."""
    if port is None:
        return
    with _lock:
        _reserved.discard(port)


def reserved_ports() -> frozenset[int]:
    """Ports currently held (for diagnostics and tests)."""
    with _lock:
        return frozenset(_reserved)
