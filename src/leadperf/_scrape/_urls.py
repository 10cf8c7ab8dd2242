"""URL checks: what may be scraped, what may go on the wire, and where it may connect.

Every engine gets requests that already passed :func:`check_request` (the method an RFC
9110 token, header names tokens, no control bytes in the target or header values), so an
injected ``\\r\\n`` never reaches any engine. With ``allow_private_networks=False`` the
scraper resolves each host (and each redirect's) and refuses loopback, private,
link-local, multicast and cloud metadata addresses before anything is sent.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import anyio

from .._util import mask_url
from ..errors import InvalidURLError, UnsafeRequestError

__all__ = ["check_headers", "check_public", "check_request", "check_url", "is_public_address"]

#: A plain ``host[:port]``: URLs starting ``http(s)://`` + this skip ``urlsplit`` (same answer).
_PLAIN_NETLOC = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*(?::[0-9]{1,5})?")
#: RFC 9110 ``token``: what a method and a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Bytes that never belong in a request target (C0 controls, DEL; engines encode spaces).
_TARGET_CTL = re.compile(r"[\x00-\x1f\x7f]")
#: Bytes that never belong in a header value (C0 controls but tab, DEL).
_VALUE_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COMMON_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
#: Cloud metadata endpoints not covered by the private/link-local ranges.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "168.63.129.16")
)


def check_url(url: object) -> tuple[str, str] | InvalidURLError:
    """``(scheme, netloc)`` of an absolute http(s) URL, or the error saying what is wrong."""
    # The bulk case, several times cheaper than urlsplit; anything unusual falls through.
    if type(url) is str:
        if url.startswith("https://"):
            scheme, start = "https", 8
        elif url.startswith("http://"):
            scheme, start = "http", 7
        else:
            scheme, start = "", 0
        if start:
            match = _PLAIN_NETLOC.match(url, start)
            if match is not None:
                end = match.end()
                if end == len(url) or url[end] in "/?#":
                    return scheme, match.group()
    if not isinstance(url, str):
        return InvalidURLError(
            f"URL must be a str, got {type(url).__name__}; pass absolute http(s) URLs",
            url=repr(url),
        )
    if not url.strip():
        return InvalidURLError("URL is empty; pass absolute http(s) URLs", url=url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return InvalidURLError(f"{mask_url(url)!r} is not a valid URL ({exc})", url=url)
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        return InvalidURLError(
            f"{mask_url(url)!r} has no scheme or host; write it as http://host/... or "
            "https://host/...",
            url=url,
        )
    if scheme not in ("http", "https"):
        return InvalidURLError(
            f"{mask_url(url)!r} has unsupported scheme {scheme!r}; only http and https are scraped",
            url=url,
        )
    host = parts.netloc.rpartition("@")[2]
    if not host or host.startswith(":"):
        return InvalidURLError(f"{mask_url(url)!r} has no host", url=url)
    return scheme, parts.netloc


def check_headers(headers: Iterable[tuple[str, str]], url: str | None = None) -> None:
    """Raise :class:`UnsafeRequestError` for a header that would corrupt the request head."""
    for name, value in headers:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise UnsafeRequestError(
                f"header name {name!r} is not an HTTP token; drop it or fix its spelling",
                url=url,
            )
        if not isinstance(value, str) or _VALUE_CTL.search(value):
            raise UnsafeRequestError(
                f"header {name!r} has a control byte (CR, LF, NUL...) in its value; "
                "remove it (it could inject header lines)",
                url=url,
            )


def check_request(method: str, url: str) -> None:
    """Raise :class:`UnsafeRequestError` for a method or URL that would corrupt the request.

    Args:
        method: must be an RFC 9110 token (``GET``, ``PROPFIND``...).
        url: must hold no control byte, space or DEL anywhere.

    Raises:
        UnsafeRequestError: saying which part is unsafe.
    """
    if method not in _COMMON_METHODS and not _TOKEN.match(method):
        raise UnsafeRequestError(
            f"method {method!r} is not an HTTP token (letters, digits, !#$%&'*+-.^_`|~); "
            "it could inject header lines",
            url=url,
        )
    if _TARGET_CTL.search(url):
        raise UnsafeRequestError(
            f"{mask_url(url)!r} holds a control byte; percent-encode it",
            url=url,
        )


def is_public_address(address: str) -> bool:
    """True for an address on the public internet (not loopback, private, metadata...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip in _METADATA
        or not ip.is_global
    )


async def check_public(url: str) -> None:
    """Resolve ``url``'s host; raise :class:`UnsafeRequestError` unless every address is public.

    Every address must be public, not just one: an attacker's name answering one public
    and one private address would otherwise pass the check and connect to the private one.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise InvalidURLError(f"{mask_url(url)!r} has no host", url=url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        from ..errors import ScrapeConnectionError

        raise ScrapeConnectionError(
            f"{mask_url(url)}: cannot resolve {host!r} ({exc})", url=url
        ) from exc
    for info in infos:
        address = str(info[4][0])
        if not is_public_address(address):
            raise UnsafeRequestError(
                f"{mask_url(url)} resolves to {address}, a private, loopback, link-local or "
                "metadata address; refused because allow_private_networks=False",
                url=url,
            )
