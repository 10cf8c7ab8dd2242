"""One credential masker for every form a secret takes in leadperf's inputs.

``mask_url`` hides the password of a URL's userinfo and the values of secret query (and
fragment) parameters, whatever the scheme; ``mask_dsn`` also handles libpq ``key=value``
strings; ``mask_text`` scrubs free text (server messages, tracebacks) of known secrets and of
any URL or ``password=`` pair it contains. Reprs, logs, errors and CLI output go through these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

__all__ = [
    "MASK",
    "SECRET_PARAMS",
    "is_secret_param",
    "mask_dsn",
    "mask_text",
    "mask_url",
    "secrets_of",
]

MASK = "***"

# Parameter names whose value is a credential, compared case-insensitively.
SECRET_PARAMS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "sslpassword",
        "sslkey",
        "api_key",
        "apikey",
        "access_token",
        "auth_token",
        "client_secret",
        "sign_key",
    }
)
# Longer names holding one of these words are secrets too (``db_password``, ``x-auth-token``).
_SECRET_WORDS = ("password", "passwd", "secret", "token")

_SECRET_ALTERNATION = "|".join(sorted(map(re.escape, SECRET_PARAMS), key=len, reverse=True))
_KV_SECRET = re.compile(
    rf"(?P<key>\b(?:{_SECRET_ALTERNATION})\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|[^\s'&;]+)",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def is_secret_param(name: str) -> bool:
    """Whether a query or DSN parameter called ``name`` holds a credential."""
    lowered = name.strip().lower()
    return lowered in SECRET_PARAMS or any(word in lowered for word in _SECRET_WORDS)


def _mask_params(params: str) -> str:
    """Mask the secret values of an ``a=1&b=2`` (or ``;``-separated) parameter string."""
    if "=" not in params:
        return params
    out = []
    for piece in re.split(r"([&;])", params):
        name, sep, _value = piece.partition("=")
        if sep and is_secret_param(unquote_plus(name)):
            out.append(f"{name}={MASK}")
        else:
            out.append(piece)
    return "".join(out)


def _mask_netloc(netloc: str) -> str:
    # The last "@" ends the userinfo, as urlsplit reads it; ":" splits user from password.
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{MASK}@{hostport}" if colon else f"{user}@{hostport}"


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with every credential in it replaced by ``***``.

    Masks the userinfo password (``redis://:pw@host``) and secret query or fragment
    parameters (``?password=``, ``pass``, ``pwd``, ``secret``, ``token``, ``sslpassword``...)
    for any scheme. A string without ``://`` is also masked as a libpq DSN. ``None`` and ``""``
    come back unchanged; an unparsable URL becomes ``"<invalid url>"``.

    Args:
        url: a URL, a libpq ``key=value`` string or ``None``.

    Returns:
        The masked string (or ``None``).
    """
    if not url:
        return url
    if "://" not in url:
        masked = _KV_SECRET.sub(lambda m: m.group("key") + MASK, url)
        head, q, tail = masked.partition("?")
        return head + q + _mask_params(tail) if q else masked
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    scheme_end = url.index("://") + 3
    rest = url[scheme_end:]
    # Rebuild from the original text so nothing else (case, port spelling) changes.
    netloc_end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            netloc_end = min(netloc_end, found)
    netloc, after = rest[:netloc_end], rest[netloc_end:]
    path_query, hash_, fragment = after.partition("#")
    path, qmark, query = path_query.partition("?")
    del parts  # parsed only to refuse what urllib cannot read
    out = url[:scheme_end] + _mask_netloc(netloc) + path
    if qmark:
        out += "?" + _mask_params(query)
    if hash_:
        out += "#" + _mask_params(fragment)
    return out


def mask_dsn(dsn: str) -> str:
    """Return a PostgreSQL DSN (URL or libpq ``key=value`` string) with its secrets masked.

    Args:
        dsn: ``postgresql://u:pw@h/db?sslpassword=x`` or ``host=h password='p w'``.

    Returns:
        The same text with each password, and every other secret parameter, as ``***``.
    """
    return mask_url(dsn) or ""


def secrets_of(url_or_dsn: str | None) -> list[str]:
    """The credential values in a URL or DSN (to scrub them from messages quoting them).

    Args:
        url_or_dsn: a URL or libpq ``key=value`` string.

    Returns:
        Each secret once, raw and non-empty, longest first.
    """
    if not url_or_dsn:
        return []
    found: list[str] = []
    if "://" in url_or_dsn:
        try:
            parts = urlsplit(url_or_dsn)
            password = parts.password
        except ValueError:
            return []
        if password:
            found.append(unquote_plus(password))
        for params in (parts.query, parts.fragment):
            for piece in re.split(r"[&;]", params):
                name, sep, value = piece.partition("=")
                if sep and value and is_secret_param(unquote_plus(name)):
                    found.append(unquote_plus(value))
    else:
        for match in _KV_SECRET.finditer(url_or_dsn):
            value = match.group("value")
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value.strip("'"))
            if value:
                found.append(value)
    return sorted(set(found), key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Scrub free text (a server's error message, a traceback line) of credentials.

    Replaces each of ``secrets`` (raw and URL-quoted forms), then masks every URL and every
    ``password=...`` pair the text contains.

    Args:
        text: the text to show.
        secrets: known secret values, e.g. ``secrets_of(dsn)``; ``None`` and ``""`` are skipped.

    Returns:
        The text with ``***`` in place of each credential.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, MASK)
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)) or "", text)
    return _KV_SECRET.sub(lambda m: m.group("key") + MASK, text)
