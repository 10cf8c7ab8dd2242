"""Host name lookups for the native engine: cached a few seconds, one in flight per name.

Opening 200 connections to one site must not cost 200 lookups through the executor, and
the address that connected last is tried first next time (``localhost`` answers ``::1``
first, and many local servers listen on 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

__all__ = ["DNS_TTL", "Address", "Resolver", "is_ip"]

DNS_TTL = 10.0  # seconds a host name lookup is reused (aiohttp's default too)

Address = tuple[int, str]  # socket family, numeric host


class Resolver:
    """Host name lookups cached for ``ttl`` seconds, one lookup in flight per name."""

    def __init__(self, ttl: float = DNS_TTL) -> None:
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[list[Address]]] = {}

    async def resolve(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> list[Address]:
        """The addresses of ``host``, the one that worked last first."""
        if is_ip(host):
            return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        key = (host, port)
        entry = self._cache.get(key)
        now = loop.time()
        if entry is not None and entry[0] > now:
            return entry[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[Address]] = loop.create_future()
        self._pending[key] = future
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses: list[Address] = []
            for family, _, _, _, sockaddr in infos:
                address = (int(family), str(sockaddr[0]))
                if address not in addresses:
                    addresses.append(address)
            if not addresses:
                raise OSError(f"no address found for {host}")
            if len(self._cache) >= 1024:
                self._cache.clear()
            self._cache[key] = (loop.time() + self.ttl, addresses)
            future.set_result(addresses)
            return addresses
        except BaseException as exc:
            # Whoever waits on this lookup gets an error to retry on, never our cancellation.
            shared = exc if isinstance(exc, Exception) else OSError(f"lookup of {host} stopped")
            future.set_exception(shared)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._pending[key]

    def worked(self, host: str, port: int, address: Address) -> None:
        """Remember that ``address`` connected: it is tried first next time."""
        entry = self._cache.get((host, port))
        if entry is not None and entry[1][0] != address and address in entry[1]:
            rest = [a for a in entry[1] if a != address]
            self._cache[(host, port)] = (entry[0], [address, *rest])


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
