"""URL normalisation for dedup: one spelling per resource, so workers agree on "seen".

Only rewrites that never change which resource a URL names (RFC 3986 section 6.2.2-6.2.3):
scheme and host lower-cased, the host IDNA-encoded (UTS #46, through the well-kept
``idna`` package), default ports dropped, an empty path made ``/``, the fragment dropped
(it never reaches the server). Sorting the query is opt-in: most servers ignore the order
of parameters, but not all.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError

__all__ = ["normalize_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host(host: str, url: str) -> str:
    if host.startswith("["):  # an IPv6 literal: case only
        return host.lower()
    if host.isascii():
        lowered = host.lower()
        if "xn--" not in lowered:
            return lowered
    import idna

    try:
        return ".".join(
            idna.encode(label, uts46=True).decode("ascii") if label else ""
            for label in host.rstrip(".").split(".")
        ) + ("." if host.endswith(".") else "")
    except idna.IDNAError as exc:
        raise ConfigError(
            f"url {url!r}: host {host!r} is not a valid internationalised name ({exc})",
            key="url",
        ) from None


def normalize_url(url: str, *, sort_query: bool = False) -> str:
    """The normalised form of an absolute http(s) URL (see the module docstring).

    Args:
        url: an absolute ``http://`` or ``https://`` URL.
        sort_query: also sort the query parameters (keeps blank values and repeats).

    Returns:
        The normalised URL.

    Raises:
        ConfigError: ``url`` is not an absolute http(s) URL or its host is not valid IDNA.
    """
    if not isinstance(url, str):
        raise ConfigError(f"url: must be a str, got {type(url).__name__}", key="url")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"url {url!r} is not a valid URL ({exc})", key="url") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"url {url!r}: expected an absolute http(s) URL", key="url")
    netloc = parts.netloc.rpartition("@")
    userinfo = netloc[0] + netloc[1]
    hostport = netloc[2]
    if hostport.startswith("["):
        host = hostport[: hostport.index("]") + 1]
    else:
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    host = _host(host, url)
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    query = parts.query
    if sort_query and query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(sorted(pairs), doseq=True)
    return urlunsplit((scheme, userinfo + host, parts.path or "/", query, ""))
