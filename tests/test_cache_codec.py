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


SIGN_KEY = "k" * 32
OLD_KEY = "o" * 32


def test_pickle_refused_unless_opted_in_and_signed() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    with pytest.raises(SerializationError, match="pickle"):
        Codec().encode(Point(1))
    # Pickle, to write or to read, needs a sign key.
    with pytest.raises(ConfigError, match="sign_key"):
        Codec(serializer="pickle")
    with pytest.raises(ConfigError, match="sign_key"):
        Codec(allow_pickle=True)
    data = Codec(serializer="pickle", sign_key=SIGN_KEY).encode({"when": {1, 2}}, "k")
    assert data[0] & 0x0F == 5
    with pytest.raises(SerializationError, match="sign key"):
        Codec().decode(data, "k")
    with pytest.raises(SerializationError, match="allow_pickle"):
        Codec(sign_key=SIGN_KEY).decode(data, "k")
    assert Codec(allow_pickle=True, sign_key=SIGN_KEY).decode(data, "k") == {"when": {1, 2}}
    # A pickle payload smuggled under the pickle header is never unpickled by default.
    evil = b"\x05" + pickle.dumps(print)
    with pytest.raises(SerializationError):
        Codec().decode(evil)
    # Nor by a pickle-reading codec: it is not signed with the key.
    with pytest.raises(SerializationError, match="not signed"):
        Codec(allow_pickle=True, sign_key=SIGN_KEY).decode(evil)


def test_signed_entries_verify_and_forgeries_are_refused() -> None:
    codec = Codec(sign_key=SIGN_KEY)
    data = codec.encode({"admin": False}, "app:user:1")
    assert data[0] & 0x80
    assert len(data) > 33
    assert codec.decode(data, "app:user:1") == {"admin": False}
    forged = Codec().encode({"admin": True}, "app:user:1")  # written without the key
    with pytest.raises(SerializationError, match="not signed"):
        codec.decode(forged, "app:user:1")
    # Setting the signed bit and a made-up tag does not help.
    fake = bytes((forged[0] | 0x80,)) + b"\x00" * 32 + forged[1:]
    with pytest.raises(SerializationError, match="does not verify"):
        codec.decode(fake, "app:user:1")
    # A genuine entry moved under another key does not verify either.
    with pytest.raises(SerializationError, match="does not verify"):
        codec.decode(data, "app:user:2")
    # One flipped payload bit is caught; so is an entry signed with another key.
    flipped = data[:-1] + bytes((data[-1] ^ 1,))
    with pytest.raises(SerializationError, match="does not verify"):
        codec.decode(flipped, "app:user:1")
    with pytest.raises(SerializationError, match="does not verify"):
        codec.decode(Codec(sign_key="x" * 32).encode({"admin": True}, "app:user:1"), "app:user:1")
    # An unkeyed codec cannot vouch for a signed entry, so it refuses it.
    with pytest.raises(SerializationError, match="no sign key"):
        Codec().decode(data, "app:user:1")
    # Compressed values are signed over the compressed bytes and read back whole.
    big = {"html": "<p>lead</p>" * 500}
    packed = codec.encode(big, "k")
    assert (packed[0] & 0x7F) >> 4 == 2
    assert codec.decode(packed, "k") == big


def test_sign_key_rotation_reads_old_entries_and_writes_with_the_new_key() -> None:
    old = Codec(sign_key=OLD_KEY)
    rotated = Codec(sign_key=[SIGN_KEY, OLD_KEY])
    written_before = old.encode("lead", "k")
    assert rotated.decode(written_before, "k") == "lead"
    written_after = rotated.encode("lead", "k")
    assert Codec(sign_key=SIGN_KEY).decode(written_after, "k") == "lead"
    with pytest.raises(SerializationError, match="does not verify"):
        old.decode(written_after, "k")
    # Once the old key is retired, its entries are refused.
    with pytest.raises(SerializationError, match="does not verify"):
        Codec(sign_key=SIGN_KEY).decode(written_before, "k")
    assert "o" * 16 not in repr(rotated)
    assert "sign_keys=2" in repr(rotated)


def test_sign_key_from_settings_and_bad_keys() -> None:
    settings = Settings(cache={"sign_key": f"{SIGN_KEY},{OLD_KEY}"})
    codec = Codec.from_settings(settings)
    assert codec.signed
    assert Codec(sign_key=SIGN_KEY).decode(codec.encode(1, "k"), "k") == 1
    assert codec.decode(Codec(sign_key=OLD_KEY).encode(1, "k"), "k") == 1
    env = Settings.from_env(environ={"LEADPERF_CACHE_SIGN_KEY": f"{SIGN_KEY},{OLD_KEY}"})
    from_env = Codec.from_settings(env)
    assert from_env.decode(Codec(sign_key=OLD_KEY).encode("v", "k"), "k") == "v"
    assert SIGN_KEY not in repr(env)
    assert SIGN_KEY not in str(env.as_dict())
    for bad in ("short", b"", [], ["x" * 32, "tiny"], 12345):
        with pytest.raises(ConfigError, match="sign_key") as info:
            Codec(sign_key=bad)  # type: ignore[arg-type]
        assert "tiny" not in str(info.value)
        assert "short" not in str(info.value)


# 421 bytes of brotli that decode to 512 MiB of zeros (quality 11, 16 MiB window).
BROTLI_BOMB = bytes.fromhex(
    "cfffff7ff82700e2b14020f7fe9ffffffff04f00c4610180eefd3fffffffe19f0088c32200ddfb7ffeffffc3"
    "3f0110870500baf7fffcffff877f02200e0b0074effff9ffff0fff04401c1600e8defff3ffff1ffe0980382c"
    "00d0bdffe7ffff3ffc1300715800a07bffcfffff7ff82700e2b00040f7fe9ffffffff04f00c4610180eefd3f"
    "ffffffe19f0088c30200ddfb7ffeffffc33f0110870500baf7fffcffff877f02200e0b0074effff9ffff0fff"
    "04401c1600e8defff3ffff1ffe0980382c00d0bdffe7ffff3ffc1300715800a07bffcfffff7ff82700e2b000"
    "40f7fe9ffffffff04f00c4610180eefd3fffffffe19f0088c30200ddfb7ffeffffc33f0110870500baf7fffc"
    "ffff877f02200e0b0074effff9ffff0fff04401c1600e8defff3ffff1ffe0980382c00d0bdffe7ffff3ffc13"
    "00715800a07bffcfffff7ff82700e2b00040f7fe9ffffffff04f00c4610180eefd3fffffffe19f0088c30200"
    "ddfb7ffeffffc33f0110870500baf7fffcffff877f02200e0b0074effff9ffff0fff04401c1600e8defff3ff"
    "ff1ffe0980382c00d0bdffe7ffff3ffc1300715800a07bff3f"
)


def test_decompression_bomb_refused_quickly_with_bounded_memory(reliability: object) -> None:
    import resource
    import time

    entry = b"\x21" + BROTLI_BOMB  # brotli, bytes format
    assert len(entry) < 1024
    # Prove the entry really expands past the cap (streamed, 16 MiB at a time).
    d = brotli.Decompressor()
    total = len(d.process(BROTLI_BOMB, output_buffer_limit=16 * 2**20))
    while not d.is_finished():
        total += len(d.process(b"", output_buffer_limit=16 * 2**20))
    assert total == 512 * 2**20
    codec = Codec(max_decoded_size=8 * 2**20)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(SerializationError, match="max_decoded_size"):
        codec.decode(entry)
    took = time.perf_counter() - started
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert took < 1.0
    assert grew_kb < 64 * 1024  # peak RSS grew by far less than the 512 MiB it claims
    # gzip bombs are held to the same cap.
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    gz_bomb = b"".join(gz.compress(b"\0" * 2**20) for _ in range(64)) + gz.flush()
    with pytest.raises(SerializationError, match="max_decoded_size"):
        codec.decode(b"\x11" + gz_bomb)
    # Uncompressed entries over the cap are refused too, and so are values to write.
    with pytest.raises(SerializationError, match="max_decoded_size"):
        Codec(max_decoded_size=10).decode(b"\x01" + b"x" * 11)
    with pytest.raises(SerializationError, match="max_decoded_size"):
        Codec(max_decoded_size=10).encode(b"x" * 11)
    assert Codec(max_decoded_size=10).decode(b"\x01" + b"x" * 10) == b"x" * 10
    reliability.record(  # type: ignore[attr-defined]
        "cache",
        f"forged {len(entry)}-byte brotli entry decoding to 512 MiB",
        "refused (miss + error) after at most max_decoded_size of output",
        f"refused in {took * 1000:.0f} ms; peak RSS grew {grew_kb / 1024:.1f} MiB",
    )


def test_truncated_compressed_entries_are_refused() -> None:
    codec = Codec()
    br = codec.encode("y" * 5000)
    gz = Codec(compression="gzip").encode("y" * 5000)
    for data in (br[:-3], gz[:-5]):
        with pytest.raises(SerializationError, match=r"truncated|decompress"):
            codec.decode(data)


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
