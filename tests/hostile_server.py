"""A raw-socket HTTP server on 127.0.0.1 that answers exactly the bytes a test scripts.

Each connection is served by a thread: the server reads one request head (and a body by
``Content-Length``), records the raw bytes, looks the path up in the routes and runs that
route's script with the socket. A script writes whatever it likes (malformed framing,
oversized heads, bombs, a reset) and returns True to read another request on the same
connection. Tests then assert on what the client returned and on what the server
received: ``requests`` (raw request bytes in arrival order), ``connections`` (accepted)
and ``requests_per_connection``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from urllib.parse import unquote_to_bytes

Script = Callable[[socket.socket, bytes], bool]

__all__ = ["HostileServer", "Script", "drip", "raw", "reset_after", "response"]


def response(
    body: bytes = b"fine",
    *,
    status: str = "200 OK",
    headers: tuple[tuple[str, str], ...] = (),
    length: bool = True,
) -> bytes:
    """A well-formed response (the base most scripts start from)."""
    lines = [f"HTTP/1.1 {status}"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw(data: bytes, *, keep: bool = False) -> Script:
    """Send ``data`` in one write; close unless ``keep`` (then serve the next request)."""

    def script(sock: socket.socket, request: bytes) -> bool:
        sock.sendall(data)
        return keep

    return script


def reset_after(data: bytes) -> Script:
    """Send ``data``, then reset the connection (RST, not FIN)."""

    def script(sock: socket.socket, request: bytes) -> bool:
        sock.sendall(data)
        time.sleep(0.05)  # let the client read the bytes before the reset drops them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    return script


def drip(data: bytes, interval: float) -> Script:
    """Send ``data`` one byte every ``interval`` seconds (until the client goes away)."""

    def script(sock: socket.socket, request: bytes) -> bool:
        for i in range(len(data)):
            try:
                sock.sendall(data[i : i + 1])
            except OSError:
                return False
            time.sleep(interval)
        return False

    return script


class HostileServer:
    """Serve scripted raw responses on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self.routes: dict[str, Script] = {}
        self.requests: list[bytes] = []
        self.targets: list[bytes] = []
        self.connections = 0
        self.requests_per_connection: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, script: Script) -> str:
        """Serve ``script`` at ``path`` (the raw path, query included); return its URL."""
        self.routes[path] = script
        return self.url(path)

    def reset(self) -> None:
        """Forget what was received (routes stay)."""
        with self._lock:
            self.requests.clear()
            self.targets.clear()
            self.connections = 0
            self.requests_per_connection.clear()

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                slot = len(self.requests_per_connection)
                self.requests_per_connection.append(0)
            threading.Thread(target=self._serve, args=(sock, slot), daemon=True).start()

    def _read_request(self, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _serve(self, sock: socket.socket, slot: int) -> None:
        buf = b""
        try:
            sock.settimeout(30)
            while True:
                got = self._read_request(sock, buf)
                if got is None:
                    return
                request, buf = got
                target = request.split(b"\r\n", 1)[0].split(b" ")
                path = target[1] if len(target) > 2 else b"/"
                if path.startswith(b"http://"):  # absolute form through a proxy
                    path = b"/" + path.split(b"/", 3)[-1]
                with self._lock:
                    self.requests.append(request)
                    self.targets.append(path)
                    self.requests_per_connection[slot] += 1
                script = self.routes.get(path.decode("latin-1"))
                if script is None:
                    script = self.routes.get(unquote_to_bytes(path).decode("utf-8", "replace"))
                if script is None:
                    sock.sendall(response(b"no route", status="404 Not Found"))
                    continue
                if not script(sock, request):
                    return
        except OSError:
            return
        finally:
            sock.close()
