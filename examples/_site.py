"""A tiny HTTP site on 127.0.0.1 for the examples (no network needed)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = f"<html><title>{self.path}</title><body>lead page {self.path}</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_site() -> str:
    """Serve pages in a daemon thread; return the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"
