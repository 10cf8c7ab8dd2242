"""Proxy rotation: one proxy per request, round-robin, a failing proxy benched for a while.

Modelled on Crawlee's proxy rotation: requests take the proxies in turn; a proxy whose
request fails at the connection level (refused, reset, timed out, 407) is benched for
``bench_seconds`` and skipped meanwhile; when every proxy is benched, the one whose bench
ends first is used rather than failing the request outright.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from .._util import mask_url
from ..errors import ConfigError

__all__ = ["ProxyRotation", "check_proxy"]

_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")


def check_proxy(value: object, key: str = "proxy") -> str:
    """``value`` when it is a proxy URL with a supported scheme and a host."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a proxy URL string, got {type(value).__name__}", key=key)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError:
        raise ConfigError(f"{key}: {mask_url(value)!r} is not a valid URL", key=key) from None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise ConfigError(
            f"{key}: {mask_url(value)!r} must look like http://[user:pass@]host:port "
            f"(schemes: {', '.join(_SCHEMES)})",
            key=key,
        )
    return value


class ProxyRotation:
    """Round-robin over ``proxies``, skipping benched ones; safe on one event loop."""

    __slots__ = ("_benched", "_next", "bench_seconds", "proxies")

    def __init__(self, proxies: Sequence[str], bench_seconds: float = 60.0) -> None:
        if isinstance(proxies, str) or not proxies:
            raise ConfigError("proxies: must be a non-empty list of proxy URLs", key="proxies")
        self.proxies = tuple(check_proxy(p, "proxies") for p in proxies)
        self.bench_seconds = bench_seconds
        self._benched: dict[str, float] = {}  # proxy -> monotonic time its bench ends
        self._next = 0

    def __repr__(self) -> str:
        shown = ", ".join(str(mask_url(p)) for p in self.proxies)
        return f"<ProxyRotation [{shown}] benched={len(self._benched)}>"

    def pick(self) -> str:
        """The next proxy to use (a benched one only when every proxy is benched)."""
        proxies = self.proxies
        count = len(proxies)
        benched = self._benched
        if benched:
            now = time.monotonic()
            for proxy, until in list(benched.items()):
                if until <= now:
                    del benched[proxy]
        for _ in range(count):
            proxy = proxies[self._next % count]
            self._next += 1
            if proxy not in benched:
                return proxy
        return min(benched, key=benched.__getitem__)

    def failed(self, proxy: str) -> None:
        """Bench ``proxy`` for ``bench_seconds``."""
        self._benched[proxy] = time.monotonic() + self.bench_seconds

    def benched(self) -> list[str]:
        """The proxies benched right now (masked URLs are for display; these are raw)."""
        now = time.monotonic()
        return [p for p, until in self._benched.items() if until > now]
