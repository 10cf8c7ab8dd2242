"""The one request value every engine takes, and the response limits every engine enforces.

The scraper builds a :class:`Request` (body already encoded to bytes, headers already
merged) and hands it to ``Engine.request(request)``; engines never see the user's
keyword arguments. :class:`Limits` travels with the engine: each engine enforces every
field and raises :class:`~leadperf.errors.ResponseTooLargeError` /
:class:`~leadperf.errors.TooManyRedirectsError` when one is hit.
"""

from __future__ import annotations

import json as _json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import attrs

from .._core.validate import as_attrs, positive_int

__all__ = ["DEFAULT_LIMITS", "Limits", "Request", "encode_body"]

MiB = 1024 * 1024


@attrs.frozen(slots=True)
class Limits:
    """Bounds on what one response may cost; on by default on every engine.

    Attributes:
        max_body_size: decoded body bytes (after gzip/deflate/br), checked while decoding.
        max_head_size: bytes of status line plus headers.
        max_header_count: header fields in one response head.
        max_redirects: redirects followed before :class:`TooManyRedirectsError`.
    """

    max_body_size: int = attrs.field(default=32 * MiB, validator=as_attrs(positive_int))
    max_head_size: int = attrs.field(default=64 * 1024, validator=as_attrs(positive_int))
    max_header_count: int = attrs.field(default=100, validator=as_attrs(positive_int))
    max_redirects: int = attrs.field(default=20, validator=as_attrs(positive_int))


DEFAULT_LIMITS = Limits()


@attrs.frozen(slots=True)
class Request:
    """One HTTP request as an engine sends it.

    Attributes:
        method: the request method, as given (engines check it is an RFC 9110 token).
        url: the absolute http(s) URL, without ``params`` merged in.
        params: query parameters to append to ``url``, or None.
        headers: extra header fields, in order; merged over the engine's defaults.
        content: the encoded body, or None.
        timeout: seconds for the whole exchange, connect to last decoded byte.
        follow_redirects: follow 3xx ``Location`` answers up to ``Limits.max_redirects``.
        proxy: the proxy URL for this request (chosen by the scraper's rotation), or None
            for the engine's default (its own ``proxy=`` or the environment's).
    """

    method: str
    url: str
    timeout: float
    params: Mapping[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None
    follow_redirects: bool = True
    proxy: str | None = None


def encode_body(
    content: bytes | str | None = None,
    data: Mapping[str, Any] | None = None,
    json: Any = None,
) -> tuple[bytes | None, str | None]:
    """Encode httpx-style ``content=``/``data=``/``json=`` into (body, content type or None)."""
    if content is not None:
        return (content.encode() if isinstance(content, str) else bytes(content)), None
    if data is not None:
        return urlencode(data, doseq=True).encode(), "application/x-www-form-urlencoded"
    if json is not None:
        return _json.dumps(json, separators=(",", ":")).encode(), "application/json"
    return None, None
