"""leadperf's own HTTP/1.1 engine, opt-in (``engine="native"``): lean, asyncio only.

Bulk scraping spends most of a general client's time in machinery it does not need per
request: pool scans, tracing hooks, cookie jars, stream objects, per-phase timers. This
engine keeps one :class:`asyncio.Protocol` per connection that hands every read to
httptools (llhttp, the parser behind Node.js and uvicorn, in strict mode) and resolves
one future; one timer per request bounds the whole exchange including decoding; the
pool is a LIFO list of idle connections per origin under one global cap. What it does
not do, by design: cookies, proxies (refused, never bypassed), HTTP/2, streaming bodies.

Parts: ``_wire`` (what is sent, all checked), ``_parser`` and ``_decode`` (what is
read, under :class:`~leadperf._scrape._request.Limits`), ``_pool`` (connections),
``_resolve`` (DNS cache), ``_client`` (:class:`NativeEngine`, redirects and deadlines).
"""

from __future__ import annotations

from ._client import NativeEngine

__all__ = ["NativeEngine"]
