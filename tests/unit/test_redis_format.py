"""The Redis dump file format, key globs, counts and URL handling: pure logic, no server."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest

from releasegate.backup import redis_counts, redis_format
from releasegate.errors import CheckFailed, ConfigError
from releasegate.stores import redis as stores

RECORDS = [
    (b"sess:1", 0, 0, b"\x00\x05hello\n\x00payload"),
    (b"bin:\x00\xff", 1, 1_900_000_000_000, bytes(range(256)) * 3),
    (b"", 5, 0, b""),
    ("ключ".encode(), 255, 42, b"z" * 70_000),
]


def write(path: Path, records: list[tuple[bytes, int, int, bytes]], *, compress: bool) -> None:
    writer = redis_format.DumpWriter(path, {"patterns": ["*"], "note": "test"}, compress=compress)
    for key, type_code, expire_at, payload in records:
        writer.add(key, type_code, expire_at, payload)
    writer.close()


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "d.rgdump"
    write(path, RECORDS, compress=compress)
    assert path.read_bytes()[:8] == b"RGREDIS\n"
    reader = redis_format.DumpReader(path)
    assert reader.meta == {"patterns": ["*"], "note": "test"}
    got = [(r.key, r.type_code, r.expire_at_ms, r.payload) for r in reader.records()]
    assert got == RECORDS
    meta, n = redis_format.check_file(path)
    assert n == 4 and meta["note"] == "test"


def test_many_records_cross_buffer_boundaries(tmp_path: Path) -> None:
    rng = random.Random(7)
    records = [
        (f"k:{i}".encode(), i % 6, i, rng.randbytes(rng.randrange(0, 3000))) for i in range(3000)
    ]
    path = tmp_path / "d.rgdump"
    write(path, records, compress=True)
    assert [r.payload for r in redis_format.DumpReader(path).records()] == [r[3] for r in records]
    assert path.stat().st_size < sum(len(r[3]) for r in records) + 3000 * 40


def test_empty_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "d.rgdump"
    write(path, [], compress=True)
    assert redis_format.check_file(path)[1] == 0


@pytest.mark.parametrize("compress", [True, False])
def test_every_truncation_is_detected(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "d.rgdump"
    write(path, RECORDS[:2], compress=compress)
    data = path.read_bytes()
    cut = tmp_path / "cut.rgdump"
    for size in range(len(data)):
        cut.write_bytes(data[:size])
        with pytest.raises(CheckFailed, match=r"cut\.rgdump"):
            redis_format.check_file(cut)


@pytest.mark.parametrize("compress", [True, False])
def test_flipped_bits_never_give_wrong_data(tmp_path: Path, compress: bool) -> None:
    """A flipped bit is an error, or (in a compressed run of equal bytes, where deflate
    back-references of different distances decode alike) changes nothing at all."""
    path = tmp_path / "d.rgdump"
    write(path, RECORDS, compress=compress)
    data = path.read_bytes()
    bad = tmp_path / "bad.rgdump"
    rng = random.Random(1)
    offsets = [8, 12, *rng.sample(range(16, len(data)), 80), len(data) - 1]
    detected = 0
    for offset in offsets:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        try:
            records = [
                (r.key, r.type_code, r.expire_at_ms, r.payload)
                for r in redis_format.DumpReader(bad).records()
            ]
        except CheckFailed:
            detected += 1
            continue
        assert records == RECORDS, f"offset {offset}: wrong data went undetected"
    assert detected >= len(offsets) // 2 if compress else detected == len(offsets)


def test_trailing_garbage_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "d.rgdump"
    write(path, RECORDS[:1], compress=False)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(CheckFailed, match="after the trailer"):
        redis_format.check_file(path)
    write(path, RECORDS[:1], compress=True)
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(CheckFailed, match="after the end of the compressed stream"):
        redis_format.check_file(path)
    path.write_bytes(b"REDIS0011" + b"\x00" * 40)
    with pytest.raises(CheckFailed, match="bad magic"):
        redis_format.check_file(path)


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.rgdump"
    write(path, RECORDS[:1], compress=True)
    data = bytearray(path.read_bytes())
    data[8:10] = struct.pack(">H", 2)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckFailed, match="format version 2; this releasegate reads version 1"):
        redis_format.check_file(path)


def test_trailer_count_must_match(tmp_path: Path) -> None:
    """A file whose records and CRC agree but whose count does not is still refused."""
    path = tmp_path / "d.rgdump"
    write(path, RECORDS[:1], compress=False)
    data = path.read_bytes()
    body = data[:-12]
    crc = zlib.crc32(body) & 0xFFFFFFFF
    path.write_bytes(body + struct.pack(">QI", 5, crc))
    with pytest.raises(CheckFailed, match="trailer says 5 keys, found 1"):
        redis_format.check_file(path)


def test_file_counts_offline(tmp_path: Path) -> None:
    path = tmp_path / "d.rgdump"
    write(path, RECORDS, compress=True)
    counts = redis_counts.file_counts(path, ["sess:*", "bin:*"])
    assert counts["keys"] == 4 and counts["with_ttl"] == 2
    assert counts["types"] == {"hash": 1, "other": 1, "stream": 1, "string": 1}
    assert counts["patterns"]["sess:*"] == {"keys": 1, "with_ttl": 0, "types": {"string": 1}}
    assert counts["patterns"]["bin:*"] == {"keys": 1, "with_ttl": 1, "types": {"hash": 1}}


# -- counts -------------------------------------------------------------------------------


def test_compare_and_add_counts() -> None:
    a = {"keys": 3, "with_ttl": 1, "types": {"string": 3}, "patterns": {"*": {"keys": 3}}}
    b = {"keys": 1, "with_ttl": 1, "types": {"string": 1}, "patterns": {"*": {"keys": 1}}}
    total = redis_counts.add_counts(a, b)
    assert total["keys"] == 4 and total["types"] == {"string": 4}
    assert total["patterns"]["*"]["keys"] == 4
    assert redis_counts.add_counts(total, b, sign=-1)["keys"] == 3
    assert redis_counts.compare_counts(a, a) == []
    diffs = {d.item: (d.expected, d.actual) for d in redis_counts.compare_counts(a, total)}
    assert diffs == {
        "keys": (3, 4),
        "keys (string)": (3, 4),
        "keys with a TTL": (1, 2),
        "keys *": (3, 4),
    }


# -- globs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("sess:*", [b"sess:", b"sess:1", b"sess:a:b"], [b"session:1", b"xsess:1"]),
        ("*", [b"", b"anything\nat all"], []),
        ("a?c", [b"abc", b"a\x00c"], [b"ac", b"abbc"]),
        ("h[ae]llo", [b"hello", b"hallo"], [b"hillo"]),
        ("h[^e]llo", [b"hallo", b"hbllo"], [b"hello"]),
        ("h[a-c]x", [b"hax", b"hcx"], [b"hdx"]),
        ("h[c-a]x", [b"hbx"], [b"hdx"]),
        ("lit\\*", [b"lit*"], [b"lit", b"litx"]),
        ("x[\\]]y", [b"x]y"], [b"xay"]),
        ("a.b+c", [b"a.b+c"], [b"aXbbc"]),
        ("open[", [b"open["], [b"open"]),
    ],
)
def test_compile_glob(pattern: str, matches: list[bytes], misses: list[bytes]) -> None:
    rx = stores.compile_glob(pattern)
    for key in matches:
        assert rx.match(key), key
    for key in misses:
        assert not rx.match(key), key


def test_glob_escape_and_pattern_set() -> None:
    assert stores.compile_glob(stores.glob_escape("a*b?[c]\\") + "*").match(b"a*b?[c]\\zz")
    assert not stores.compile_glob(stores.glob_escape("a*b")).match(b"axxb")
    one = stores.PatternSet(["sess:*"])
    assert one.match == "sess:*" and not one.needs_filter
    many = stores.PatternSet(["sess:*", "cache:*", "sess:*"], exclude_prefixes=[b"releasegate:"])
    assert many.patterns == ["sess:*", "cache:*"] and many.match == "*"
    assert many.wanted(b"cache:1") and not many.wanted(b"user:1")
    assert not many.wanted(b"releasegate:verify:x")
    assert many.matching(b"sess:1") == [0]
    with pytest.raises(ConfigError):
        stores.PatternSet([])


# -- URLs ---------------------------------------------------------------------------------


def test_urls() -> None:
    assert (
        stores.describe_target("redis://u:secret@cache.internal:6380/4") == "cache.internal:6380/4"
    )
    assert stores.describe_target("redis://localhost") == "localhost:6379/0"
    assert stores.database_index("redis://h:1/2?db=9") == 9
    assert stores.with_db("rediss://:pw@h:1/2?ssl_cert_reqs=none", 7) == (
        "rediss://:pw@h:1/7?ssl_cert_reqs=none"
    )
    assert stores.with_db("unix:///tmp/r.sock?db=1", 3) == "unix:/tmp/r.sock?db=3"
    for bad, why in [
        ("http://h:1/0", "expected a redis://"),
        ("redis://h:1/x", "database 'x' is not a number"),
        ("redis://h:99999/0", "malformed"),
        ("redis:///0", "names no host"),
    ]:
        with pytest.raises(ConfigError, match=why):
            stores.check_url(bad, "$REDIS_URL")


def test_client_name_has_no_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASEGATE_PERFORMER", "ci runner #4")
    name = stores.client_name("migrate up")
    assert name == "releasegate/migrate-up:ci-runner-#4"
    assert all("!" <= c <= "~" for c in name)
