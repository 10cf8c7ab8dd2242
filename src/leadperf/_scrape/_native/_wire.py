"""What the native engine writes: request targets, Host, header blocks, all checked first.

Nothing reaches the socket unchecked: the method must be an RFC 9110 token, header
names tokens, header values and the request target free of control bytes (NUL, CR, LF,
VT, DEL...), so no caller input can add a header line or split a request. Host names go
through IDNA 2008 with UTS #46 mapping (the ``idna`` package), as browsers, aiohttp and
httpx send them: ``straße.test`` becomes ``xn--strae-oqa.test``, not ``strasse.test``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import idna

from ..._util import mask_url
from ...errors import InvalidURLError, UnsafeRequestError
from ._pool import Origin

__all__ = [
    "Target",
    "check_method",
    "checked_headers",
    "header_block",
    "location_url",
    "parse_url",
    "without",
]

_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"
_SAFE_LOCATION = _SAFE_QUERY + "#[]"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 section 5.6.2
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # HTAB is the one allowed in a value
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[a-z0-9_\-.]+\Z")

#: ``scheme://netloc`` with a plain netloc (no userinfo, no IPv6 literal, lower case), then
#: a request target of printable ASCII up to any fragment: the bulk case, checked by
#: construction (no control byte, no space can match).
PLAIN_URL = re.compile(r"(https?://[a-z0-9][a-z0-9.\-]*(?::[0-9]{1,5})?)([/?][!-\"$-~]*)?(?:#|\Z)")


class Target:
    """A parsed request URL: origin, request target, Host header and Authorization."""

    __slots__ = ("auth", "host_header", "origin", "target", "url")

    def __init__(
        self, url: str, origin: Origin, target: str, host_header: str, auth: str | None
    ) -> None:
        self.url = url
        self.origin = origin
        self.target = target
        self.host_header = host_header
        self.auth = auth


def _host(url: str, host: str) -> str:
    """The host as sent: IDNA 2008 A-labels for a non-ASCII name, checked characters."""
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidURLError(
                f"{mask_url(url)} has an invalid host name ({exc})", url=url
            ) from exc
    if ":" in host:  # an IPv6 literal; urlsplit checked it (and its brackets)
        return host
    if not _HOST.match(host):
        raise InvalidURLError(f"{mask_url(url)} has an invalid host name", url=url)
    return host


def parse_url(url: str, params: Mapping[str, Any] | None) -> Target:
    """Parse an absolute http(s) URL, percent-encoding the path and query as browsers do.

    Raises:
        UnsafeRequestError: the URL holds a control byte (it would reach the wire).
        InvalidURLError: not an absolute http(s) URL, or an invalid host or port.
    """
    if _URL_CONTROL.search(url):
        # urlsplit would silently drop CR, LF and TAB; anything else would be sent raw.
        raise UnsafeRequestError(
            f"{mask_url(url)!r} contains control characters; percent-encode them", url=url
        )
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except (ValueError, TypeError) as exc:
        raise InvalidURLError(f"{mask_url(str(url))} is not a valid URL ({exc})", url=url) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise InvalidURLError(f"{mask_url(url)} is not a valid http(s) URL", url=url)
    host = _host(url, host)
    default = 443 if scheme == "https" else 80
    if port is None:
        port = default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = parts.path or "/"
    query = parts.query
    if not path.isascii() or " " in path:
        path = quote(path, safe=_SAFE_PATH)
    if query and (not query.isascii() or " " in query):
        query = quote(query, safe=_SAFE_QUERY)
    if params:
        extra = urlencode(params, doseq=True)
        query = f"{query}&{extra}" if query else extra
    target = f"{path}?{query}" if query else path
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return Target(url, (scheme, host, port), target, host_header, auth)


def location_url(location: bytes) -> str:
    """A ``Location`` value as text: UTF-8 (what servers send), else percent-encoded bytes.

    A raw UTF-8 ``/café`` then goes out as ``/caf%C3%A9``, never re-encoded from latin-1.
    """
    try:
        return location.decode("utf-8")
    except UnicodeDecodeError:
        return quote(location, safe=_SAFE_LOCATION)


def check_method(method: str) -> str:
    """The method, upper-cased, if it is an RFC 9110 token.

    Raises:
        UnsafeRequestError: anything else (a space, CR/LF, a control byte, non-ASCII).
    """
    if not _TOKEN.match(method):
        raise UnsafeRequestError(
            f"method {method[:40]!r} is not an HTTP token (letters, digits, !#$%&'*+-.^_`|~)"
        )
    return method.upper()


Headers = dict[str, tuple[str, str]]  # lower-cased name -> (name as given, value)


def checked_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """Headers by lower-cased name (the last one wins), each name and value checked.

    Raises:
        UnsafeRequestError: a name that is not a token, or a value with a control byte or
            a character outside latin-1 (neither could go on the wire as given).
    """
    merged: Headers = {}
    for name, value in headers:
        text = str(value)
        if not _TOKEN.match(name):
            raise UnsafeRequestError(
                f"header name {name[:40]!r} is not an HTTP token; no spaces, colons or "
                "control characters"
            )
        if _CONTROL.search(text):
            raise UnsafeRequestError(
                f"header {name!r}: the value contains control characters (CR, LF, NUL...)"
            )
        if not text.isascii():
            try:
                text.encode("latin-1")
            except UnicodeEncodeError:
                raise UnsafeRequestError(
                    f"header {name!r}: the value is not latin-1 text; percent-encode it"
                ) from None
        merged[name.lower()] = ("Host", text) if name.lower() == "host" else (name, text)
    return merged


def header_block(headers: Headers) -> str:
    """``Name: value\\r\\n`` lines of checked headers, in order."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.values())


def without(block: str, names: tuple[str, ...]) -> str:
    """The header block minus the lines whose (lower-cased) name is in ``names``."""
    lines = block.split("\r\n")
    kept = [line for line in lines if line.partition(":")[0].strip().lower() not in names]
    return "\r\n".join(kept)
