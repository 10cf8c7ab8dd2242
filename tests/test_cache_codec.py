"""The codec: header byte, compression threshold, cross-setting reads, no pickle by default."""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path

import brotli
import pytest

from leadperf import Settings
from leadperf.cache import Codec, SqliteCache
from leadperf.errors import ConfigError, SerializationError

pytestmark = pytest.mark.anyio

LEAD = {
    "name": "Ada",
    "emails": ["ada@example.com"],
    "html": b"<div>profile</div>" * 200,
    "score": 0.93,
    "tags": None,
}
SETTINGS = Settings()


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
@pytest.mark.parametrize("compression", ["br", "gzip", "none"])
def test_every_setting_reads_every_other(serializer: str, compression: str) -> None:
    written = Codec(serializer=serializer, compression=compression, threshold=100).encode(LEAD)
    for reader_comp in ("br", "gzip", "none"):
        for reader_ser in ("msgpack", "json"):
            reader = Codec(serializer=reader_ser, compression=reader_comp)
            assert reader.decode(written) == LEAD


def test_header_records_format_and_compression() -> None:
    assert Codec().encode(b"abc") == b"\x01abc"
    assert Codec().encode("h\u00e9") == b"\x02" + "h\u00e9".encode()
    big = "lead " * 1000
    br = Codec(compression="br", threshold=1024).encode(big)
    assert br[0] == 0x22
    assert brotli.decompress(br[1:]).decode() == big
    gz = Codec(compression="gzip", threshold=1024).encode(big)
    assert gz[0] == 0x12
    assert zlib.decompress(gz[1:], wbits=47).decode() == big
    assert Codec(serializer="json").encode({"a": 1}) == b'\x03{"a":1}'
    assert Codec(serializer="msgpack").encode({"a": 1})[0] == 0x04


def test_threshold_respected_and_compression_kept_only_when_smaller() -> None:
    codec = Codec(compression="br", threshold=1000)
    small = "x" * 999
    assert codec.encode(small) == b"\x02" + small.encode()
    assert codec.encode("x" * 1000)[0] == 0x22
    incompressible = os.urandom(3000)
    assert codec.encode(incompressible)[0] == 0x01  # brotli would not make it smaller
    assert Codec(compression="none", threshold=0).encode("y" * 5000)[0] == 0x02
    from_settings = Codec.from_settings(
        Settings(cache={"compression": "gzip", "compression_threshold": 10})
    )
    assert from_settings.encode("z" * 50)[0] == 0x12


def test_bytes_nested_in_containers_round_trip() -> None:
    response = {"status": 200, "headers": {"etag": "x"}, "body": b"\x00\xff" * 10}
    for serializer in ("msgpack", "json"):
        codec = Codec(serializer=serializer)
        assert codec.decode(codec.encode(response)) == response
    json_codec = Codec(serializer="json", compression="none")
    assert b"__bytes__" in json_codec.encode({"b": b"1"})


def test_pickle_refused_unless_opted_in() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    with pytest.raises(SerializationError, match="pickle"):
        Codec().encode(Point(1))
    data = Codec(serializer="pickle").encode({"when": {1, 2}})
    assert data[0] & 0x0F == 5
    with pytest.raises(SerializationError, match="allow_pickle"):
        Codec().decode(data)
    assert Codec(allow_pickle=True).decode(data) == {"when": {1, 2}}
    # A pickle payload smuggled under the pickle header is never unpickled by default.
    evil = b"\x05" + pickle.dumps(print)
    with pytest.raises(SerializationError):
        Codec().decode(evil)


def test_foreign_or_corrupt_data_is_a_serialization_error() -> None:
    codec = Codec()
    for data in (b"", b"\x00abc", b"\x0fabc", b"\x72abc", b"\x22not brotli", b"\x04\xc1"):
        with pytest.raises(SerializationError):
            codec.decode(data)


def test_bad_codec_arguments() -> None:
    with pytest.raises(ConfigError, match="serializer"):
        Codec(serializer="yaml")
    with pytest.raises(ConfigError, match="compression"):
        Codec(compression="lz4")
    with pytest.raises(ConfigError, match="threshold"):
        Codec(threshold=-1)


def test_non_serializable_values_name_the_type() -> None:
    codec = Codec()
    for value in (object(), {1, 2}, {"f": lambda: 1}, 2**80):
        with pytest.raises(SerializationError, match="cannot store"):
            codec.encode(value)
    with pytest.raises(SerializationError):
        Codec(serializer="json").encode(float("nan"))


async def test_corrupt_stored_entry_is_a_miss_and_an_error(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "c.db"
    async with SqliteCache(path, settings=SETTINGS) as c:
        await c.set("k", "fine")
        db = sqlite3.connect(path)
        db.execute("UPDATE leadperf_cache SET value = x'22deadbeef'")
        db.commit()
        db.close()
        assert await c.get("k", "default") == "default"
        assert c.stats().errors == 1
    async with SqliteCache(path, raise_errors=True, settings=SETTINGS) as strict:
        with pytest.raises(SerializationError):
            await strict.get("k")
