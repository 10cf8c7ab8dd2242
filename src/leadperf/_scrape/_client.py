"""The httpx-style client a ``scrape_func`` receives, and turning its arguments into a Request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ._engine import Response
from ._request import Request, encode_body
from ._urls import check_headers, check_request

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._platform import Platform

__all__ = ["ScrapeClient", "build_request"]


def build_request(
    method: str,
    url: str,
    default_timeout: float,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    content: bytes | str | None = None,
    data: Mapping[str, Any] | None = None,
    json: Any = None,
    timeout: float | None = None,
    follow_redirects: bool = True,
) -> Request:
    """One checked :class:`Request` from httpx-style arguments.

    Raises:
        ConfigError: a bad ``timeout`` or ``headers`` type.
        UnsafeRequestError: a method, URL or header that would corrupt the request head.
    """
    method = method.upper()
    check_request(method, url)
    if timeout is None:
        seconds = default_timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"timeout: must be a number > 0, got {timeout!r}", key="timeout")
    else:
        seconds = float(timeout)
    body, content_type = encode_body(content, data, json)
    pairs: tuple[tuple[str, str], ...] = ()
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise ConfigError(f"headers: must be a mapping, got {headers!r}", key="headers")
        pairs = tuple(headers.items())
        check_headers(pairs, url)
    if content_type is not None and not any(k.lower() == "content-type" for k, _ in pairs):
        pairs = (*pairs, ("Content-Type", content_type))
    return Request(
        method,
        url,
        seconds,
        params=params,
        headers=pairs,
        content=body,
        follow_redirects=bool(follow_redirects),
    )


class ScrapeClient:
    """The httpx-style client a ``scrape_func`` receives.

    Requests go through the scraper's engine, stats and adaptive politeness, within the
    platform slot of the URL being scraped. Errors are leadperf's
    (:class:`ScrapeTimeoutError`, :class:`ScrapeConnectionError`, :class:`HTTPStatusError`
    from ``raise_for_status()``), so the scraper's retry policy applies to them.
    """

    __slots__ = ("_platform", "_scraper", "last_response")

    def __init__(self, scraper: Pipeline, platform: Platform) -> None:
        self._scraper = scraper
        self._platform = platform
        #: The last response this client received (None before the first).
        self.last_response: Response | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> Response:
        """Send a request and return its :class:`Response` (GETs use the cache, if any)."""
        request = build_request(
            method,
            url,
            self._scraper.timeout,
            params=params,
            headers=headers,
            content=content,
            data=data,
            json=json,
            timeout=timeout,
            follow_redirects=follow_redirects,
        )
        response = await self._scraper._request(self._platform, request)
        self.last_response = response
        return response

    async def get(self, url: str, **kwargs: Any) -> Response:
        """``request("GET", url, ...)``."""
        return await self.request("GET", url, **kwargs)

    async def head(self, url: str, **kwargs: Any) -> Response:
        """``request("HEAD", url, ...)``."""
        return await self.request("HEAD", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Response:
        """``request("POST", url, ...)``."""
        return await self.request("POST", url, **kwargs)
