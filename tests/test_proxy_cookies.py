"""Proxies (one, rotated, from the environment, SOCKS) and cookie jars, on real sockets.

The proxies are small ones the tests run on 127.0.0.1: an HTTP proxy that forwards
absolute-form requests and tunnels CONNECT, optionally asking for credentials, and a
SOCKS5 proxy. Both record what they carried, so tests assert the traffic went through
them; cookies are asserted on what the server received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import pytest

from leadperf import Settings
from leadperf.errors import ConfigError, HTTPStatusError, ScrapeConnectionError
from leadperf.scraper import AsyncScraper, RetryPolicy
from scrape_server import ScrapeServer

PROXY_ENGINES = ["aiohttp", "httpx"]
SECRET = "s3cret-pw"


class _Threaded:
    """Runs ``_serve`` connections on an asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.port = 0
        self.records: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> Any:
        threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True).start()
        assert self._ready.wait(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


class HttpProxy(_Threaded):
    """Forwards absolute-form requests and tunnels CONNECT; 407 without the credentials."""

    def __init__(
        self, auth: tuple[str, str] | None = None, upstream: tuple[str, int] | None = None
    ) -> None:
        super().__init__()
        self.auth = auth
        self.upstream = upstream  # forward everything here, whatever the host asked for

    def url(self, with_auth: bool = True, password: str | None = None) -> str:
        if self.auth and with_auth:
            return f"http://{self.auth[0]}:{password or self.auth[1]}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, OSError):
            pass
        writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Carry one request; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = _headers(lines[1:])
        given = headers.get("proxy-authorization", "")
        self.records.append({"method": method, "target": target, "auth": given})
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            if given != f"Basic {token}":
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                    b"Connection: close\r\n\r\n"
                )
                await writer.drain()
                return False
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _splice(reader, writer, up_reader, up_writer)
            return False
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        parts = urlsplit(target)
        to_host, to_port = self.upstream or (parts.hostname, parts.port or 80)
        up_reader, up_writer = await asyncio.open_connection(to_host, to_port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = [
            line
            for line in lines[1:]
            if line and not line.lower().startswith(("proxy-", "connection:", "keep-alive:"))
        ]
        up_writer.write(
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
            + "".join(f"{line}\r\n" for line in kept).encode("latin-1")
            + b"\r\n"
            + body
        )
        answer = await up_reader.readuntil(b"\r\n\r\n")
        length = int(_headers(answer.decode("latin-1").split("\r\n")[1:]).get("content-length", 0))
        answer += await up_reader.readexactly(length)
        up_writer.close()
        writer.write(answer)
        await writer.drain()
        return True


def _headers(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        if ":" in line:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
    return out


class Socks5Proxy(_Threaded):
    """A SOCKS5 proxy (no authentication) that records each CONNECT's destination."""

    def url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, count = await reader.readexactly(2)
            await reader.readexactly(count)
            writer.write(b"\x05\x00")
            _, command, _, kind = await reader.readexactly(4)
            if kind == 1:
                host = socket.inet_ntoa(await reader.readexactly(4))
            elif kind == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            else:
                host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
            port = int.from_bytes(await reader.readexactly(2), "big")
            self.records.append({"command": command, "host": host, "port": port})
            up_reader, up_writer = await asyncio.open_connection(host, port)
            writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            writer.close()
            return
        await _splice(reader, writer, up_reader, up_writer)


@pytest.fixture(scope="module")
def server() -> Iterator[ScrapeServer]:
    with ScrapeServer(ports=2) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: ScrapeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.reset()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex[:10]


def scraper(**kwargs: Any) -> AsyncScraper:
    kwargs.setdefault("settings", Settings())
    kwargs.setdefault("retry", RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05))
    return AsyncScraper(**kwargs)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- proxies ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_one_proxy_carries_every_request(server: ScrapeServer, key: str, engine: str) -> None:
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(5)]
    with HttpProxy() as proxy:
        async with scraper(engine=engine, proxy=proxy.url()) as s:
            results = await s.scrape_batch(urls)
    assert all(r.ok for r in results)
    assert sorted(r["target"] for r in proxy.records) == sorted(urls)  # absolute form
    assert server.total_hits == 5


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_proxies_rotate_and_a_dead_one_is_benched(
    server: ScrapeServer, key: str, engine: str
) -> None:
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(12)]
    dead = f"http://127.0.0.1:{closed_port()}"
    with HttpProxy() as first, HttpProxy() as second:
        async with scraper(
            engine=engine, proxies=[first.url(), dead, second.url()], max_concurrent=1
        ) as s:
            results = await s.scrape_batch(urls)
            benched = s._proxies.benched() if s._proxies else []
    assert all(r.ok for r in results)
    assert benched == [dead]
    carried = len(first.records), len(second.records)
    assert sum(carried) == 12
    assert min(carried) >= 4, carried  # turns taken, the dead one skipped after it failed
    assert sum(r.attempts for r in results) == 13  # one retry: the dead proxy's only turn


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_environment_proxies_are_honoured_unless_trust_env_is_off(
    server: ScrapeServer, key: str, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.url(0, f"/page/{key}")
    with HttpProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        async with scraper(engine=engine) as s:
            assert (await s.fetch(url)).ok
        assert [r["target"] for r in proxy.records] == [url]
        async with scraper(engine=engine, trust_env=False) as s:
            assert (await s.fetch(url + "-direct")).ok
        assert len(proxy.records) == 1  # the second went direct
    assert server.total_hits == 2


@pytest.mark.anyio
async def test_socks5_proxy_on_aiohttp(server: ScrapeServer, key: str) -> None:
    pytest.importorskip("aiohttp_socks")
    urls = [server.url(1, f"/page/{key}-{i}") for i in range(3)]
    with Socks5Proxy() as proxy:
        async with scraper(proxy=proxy.url()) as s:
            results = await s.scrape_batch(urls)
    assert all(r.ok for r in results)
    assert proxy.records
    assert {(r["host"], r["port"]) for r in proxy.records} == {("127.0.0.1", server.ports[1])}


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_proxy_credentials_are_sent_and_never_shown(
    server: ScrapeServer, key: str, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = server.url(0, f"/page/{key}")
    with HttpProxy(auth=("user", SECRET)) as proxy:
        async with scraper(engine=engine, proxy=proxy.url()) as s:
            shown = repr(s)
            good = await s.fetch(url)
        async with scraper(engine=engine, proxy=proxy.url(password="wrong-pw")) as s:
            refused = await s.fetch(url + "-refused")
    dead_proxy = f"http://user:{SECRET}@127.0.0.1:{closed_port()}"
    async with scraper(engine=engine, proxy=dead_proxy) as s:
        dead = await s.fetch(url + "-dead")
        shown += repr(s)
    assert good.ok
    assert proxy.records[0]["auth"].startswith("Basic ")
    assert isinstance(refused.error, HTTPStatusError | ScrapeConnectionError)
    assert refused.status_code in (407, None)
    assert isinstance(dead.error, ScrapeConnectionError)
    for text in (shown, str(refused.error), str(dead.error), repr(dead), caplog.text):
        assert SECRET not in text
        assert "wrong-pw" not in text
    assert "***" in shown


def test_the_native_engine_refuses_what_it_cannot_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not support proxies"):
        scraper(engine="native", proxy="http://127.0.0.1:3128")
    with pytest.raises(ConfigError, match="does not support proxies"):
        scraper(engine="native", proxies=["http://127.0.0.1:3128"])
    with pytest.raises(ConfigError, match="no cookie jar"):
        scraper(engine="native", cookies=True)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@127.0.0.1:3128")
    with pytest.raises(ConfigError, match="HTTPS_PROXY") as caught:
        scraper(engine="native")
    assert "pw@" not in str(caught.value)
    assert scraper(engine="native", trust_env=False).engine_name == "native"


def test_bad_proxy_arguments_raise_config_error() -> None:
    cases: tuple[dict[str, Any], ...] = (
        {"proxy": "ftp://127.0.0.1:21"},
        {"proxy": "not a url"},
        {"proxies": []},
        {"proxies": "http://127.0.0.1:3128"},
        {"proxy": "http://127.0.0.1:3128", "proxies": ["http://127.0.0.1:3129"]},
        {"cookies": "yes"},
    )
    for kwargs in cases:
        with pytest.raises(ConfigError):
            scraper(**kwargs)


# -- cookies ------------------------------------------------------------------------------


def _cookie_seen(body: bytes) -> str:
    return str(json.loads(body)["headers"].get("cookie", ""))


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_cookie_jar_sends_cookies_back_and_across_redirects(
    server: ScrapeServer, key: str, engine: str
) -> None:
    async with scraper(engine=engine, cookies=True) as s:
        assert (await s.fetch(server.url(0, f"/cookie/set?name=a{key}&value=1"))).ok
        echoed = await s.fetch(server.url(0, "/echo"))
        redirected = await s.fetch(server.url(0, f"/cookie/redirect?name=b{key}&value=2&to=/echo"))
    assert f"a{key}=1" in _cookie_seen(echoed.content)
    seen = _cookie_seen(redirected.content)  # set by the 302, sent to its target
    assert f"b{key}=2" in seen
    assert f"a{key}=1" in seen


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_cookies_are_off_by_default(server: ScrapeServer, key: str, engine: str) -> None:
    async with scraper(engine=engine) as s:
        assert (await s.fetch(server.url(0, f"/cookie/set?name=a{key}&value=1"))).ok
        echoed = await s.fetch(server.url(0, "/echo"))
        redirected = await s.fetch(server.url(0, f"/cookie/redirect?name=b{key}&value=2&to=/echo"))
    assert _cookie_seen(echoed.content) == ""
    assert _cookie_seen(redirected.content) == ""


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_international_host_names_are_sent_as_idna_2008(engine: str) -> None:
    # Through a proxy the request line carries the host as encoded: nothing to resolve.
    with HttpProxy() as proxy:
        async with scraper(engine=engine, proxy=proxy.url(), retry=RetryPolicy(attempts=1)) as s:
            await s.fetch("http://straße.test/page")
    # (aiohttp resends once when the proxy hangs up without an answer: same target)
    assert {r["target"] for r in proxy.records} == {"http://xn--strae-oqa.test/page"}


@pytest.mark.anyio
async def test_a_proxy_from_settings_is_used_and_masked(server: ScrapeServer, key: str) -> None:
    with HttpProxy(auth=("user", SECRET)) as proxy:
        settings = Settings().evolve(scraper={"proxy_url": proxy.url()})
        async with AsyncScraper(settings=settings) as s:
            assert (await s.fetch(server.url(0, f"/page/{key}"))).ok
    assert len(proxy.records) == 1
    shown = f"{settings.as_dict()} {settings!r}"
    assert SECRET not in shown
    assert "user:***@" in shown


@pytest.mark.anyio
@pytest.mark.parametrize("engine", PROXY_ENGINES)
async def test_a_redirect_to_a_private_address_is_refused(
    server: ScrapeServer, key: str, engine: str
) -> None:
    # A public address (an IP literal: no lookup) reached through a proxy that hands every
    # request to the local server, which redirects to loopback: the hop is refused.
    private = server.url(0, f"/page/{key}")
    with HttpProxy(upstream=("127.0.0.1", server.ports[0])) as proxy:
        async with scraper(engine=engine, proxy=proxy.url(), allow_private_networks=False) as s:
            result = await s.fetch(f"http://8.8.8.8/redirect?to={private}")
            public = await s.fetch(f"http://8.8.8.8/page/{key}-public")
    assert public.ok  # the first hop was allowed
    assert type(result.error).__name__ == "UnsafeRequestError"
    assert "allow_private_networks" in str(result.error)
    assert [r["target"] for r in proxy.records] == [
        f"http://8.8.8.8/redirect?to={private}",
        f"http://8.8.8.8/page/{key}-public",
    ]
    assert server.hits(f"/page/{key}") == 0


_TLS_SCRIPT = r"""
import asyncio, json, ssl, sys
sys.path.insert(0, sys.argv[1])
from test_proxy_cookies import HttpProxy
from leadperf import Settings
from leadperf.scraper import AsyncScraper

cert, key, engine = sys.argv[2], sys.argv[3], sys.argv[4]

async def handle(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")
    await writer.drain()
    writer.close()

async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    with HttpProxy() as proxy:
        async with AsyncScraper(settings=Settings(), engine=engine, proxy=proxy.url()) as s:
            result = await s.fetch(f"https://localhost:{port}/x")
    print(json.dumps({"status": result.status_code, "body": result.text,
                      "error": repr(result.error), "records": proxy.records, "port": port}))

asyncio.run(main())
"""


def _certificate(directory: Any) -> tuple[str, str, str]:
    """A CA and a certificate for ``localhost`` it signed: (ca file, cert file, key file)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leadperf test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.mark.parametrize("engine", PROXY_ENGINES)
def test_https_goes_through_the_proxy_as_a_connect_tunnel(tmp_path: Any, engine: str) -> None:
    pytest.importorskip("cryptography")
    import os
    import subprocess
    import sys

    ca, cert, key = _certificate(tmp_path)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "SSL_CERT_FILE": ca, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        env.pop(name, None)
        env.pop(name.lower(), None)
    proc = subprocess.run(
        [sys.executable, "-c", _TLS_SCRIPT, tests_dir, cert, key, engine],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (seen["status"], seen["body"]) == (200, "secret"), seen
    assert [(r["method"], r["target"]) for r in seen["records"]] == [
        ("CONNECT", f"localhost:{seen['port']}")
    ]
