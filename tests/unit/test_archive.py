"""archive.py without Redis: the packed form round-trips any payload, and refuses what it
cannot pack or read."""

from __future__ import annotations

import hashlib
import zlib

import pytest

from celery_durable import CheckpointDecodeError
from celery_durable.archive import MAX_ARCHIVE_BYTES, frame, pack, unpack

PAYLOADS = {"0": '{"id":"a","v":1}', "1": 'raw\nnewline: "x"', "2": "", "3": "ünï ✓ 支付"}
TRACE = ['[1,0,"type","run_created"]', '[2,4,"type","run_completed","note","a\\nb"]']


@pytest.mark.parametrize("compress", [True, False])
def test_checkpoints_and_trace_round_trip(compress: bool) -> None:
    packed = pack(PAYLOADS, compress=compress)
    assert packed is not None
    # The script appends the trace entries, joined by newlines, to the head.
    value = packed.head + "\n".join(TRACE).encode()
    assert unpack(value) == (PAYLOADS, TRACE)
    assert unpack(packed.head) == (PAYLOADS, [])
    assert packed.head[:3] == (b"A1z" if compress else b"A1p")


def test_the_digest_is_over_the_framing_the_script_rebuilds() -> None:
    packed = pack(PAYLOADS)
    assert packed is not None
    # <bytes>:<payload> for positions 0..n-1, sizes in bytes (UTF-8), as Lua's # counts.
    framed = b'16:{"id":"a","v":1}16:raw\nnewline: "x"0:' + b"16:" + "ünï ✓ 支付".encode()
    assert frame(PAYLOADS) == framed
    assert packed.digest == hashlib.sha1(framed).hexdigest()
    assert zlib.decompress(packed.head.split(b":", 1)[1]) == framed


def test_what_cannot_be_packed_is_left_alone() -> None:
    assert pack({"0": "a", "2": "c"}) is None  # a gap: not positions 0..n-1
    assert pack({"1": "b"}) is None
    assert pack({"0": "x" * (MAX_ARCHIVE_BYTES + 1)}) is None
    empty = pack({})
    assert empty is not None and unpack(empty.head) == ({}, [])


@pytest.mark.parametrize("value", [b"", b"B1z3:abc", b"A1q3:abc", b"A1z9:abc", b"A1zx:abc",
                                   b"A1z3:abc", b"A1p4:5:abc", b"A1p2:ab\xff\xfe"])
def test_foreign_or_damaged_values_are_decode_errors(value: bytes) -> None:
    with pytest.raises(CheckpointDecodeError, match="a run archive could not be read"):
        unpack(value)


def test_a_large_run_compresses_with_the_small_window_and_reads_back() -> None:
    import json
    import random

    from celery_durable import archive

    rng = random.Random(7)
    checkpoints = {str(i): json.dumps({"id": f"s#{i}", "v": "".join(
        rng.choice("abcdef") for _ in range(200)), "t0": 1, "t1": 2, "a": 1})
        for i in range(2000)}
    packed = archive.pack(checkpoints)
    assert packed is not None
    section = packed.head[packed.head.index(b":") + 1:]
    assert section[0] & 0x0F == 8 and section[0] >> 4 == archive.ZLIB_WBITS - 8  # 4 KiB
    framed = archive.frame(checkpoints)
    assert framed is not None and len(section) < len(framed) / 2
    assert zlib.decompress(section) == framed
    assert archive.unpack(packed.head)[0] == checkpoints
