"""The archive of a completed run: its checkpoints and trace packed into one string key.

A completed run is never claimed, reopened or committed to again, so the attempt that
completes it packs its checkpoints (``pack``) and ``end_attempt.lua`` (``lua/_archive.lua``)
moves them, with the trace entries, into ``P{<run_id>}:archive`` in the same script call,
deleting the steps hash and the trace list. One string instead of a hash field, a sds and
an allocator rounding per step: about half the memory of a small run (docs/design.md).

The value, as bytes::

    b"A1" codec(b"z" zlib | b"p" plain) <decimal size of the section> b":" <section>
    <trace entries, joined by b"\\n">

The section holds the checkpoints of positions 0..n-1 in order, each framed as
``<size in bytes>:<payload>`` (so any payload fits), compressed or not. The script
recomputes the framing from the steps hash and archives only if its SHA-1 equals the
``digest`` sent with it: the archive always holds exactly what the steps hash held. Trace
entries never contain a raw newline (cjson escapes it). Entries appended after the archive
was made go to a new trace list; readers put both together (``RunStore.read_run``).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import CheckpointDecodeError

MAGIC = b"A1"
ZLIB, PLAIN = b"z", b"p"
#: Runs whose framed checkpoints are larger stay as they are: the end of their attempt
#: would send them all again, and the script would hash them while Redis waits.
MAX_ARCHIVE_BYTES = 1024 * 1024
#: zlib's window (2**12 = 4 KiB) and memory level: with the defaults (32 KiB, 8) setting up
#: the compressor costs about 55 us per archive on the benchmark VM, whatever the size;
#: with these about 9 us, for archives about 2 % larger. Any zlib reader decompresses it.
ZLIB_WBITS, ZLIB_MEM_LEVEL = 12, 4


@dataclass(frozen=True, slots=True)
class Packed:
    """What ``end_attempt.lua`` needs to archive a run: the value's head (everything but
    the trace) and the SHA-1 (hex) of the framed checkpoints."""

    head: bytes
    digest: str


def frame(checkpoints: Mapping[str, str]) -> bytes | None:
    """The checkpoints of positions 0..n-1, framed in order; None if the positions are not
    exactly 0..n-1 (then there is nothing this module can pack)."""
    parts = []
    for pos in range(len(checkpoints)):
        payload = checkpoints.get(str(pos))
        if payload is None:
            return None
        data = payload.encode()
        parts.append(b"%d:%s" % (len(data), data))
    return b"".join(parts)


def pack(checkpoints: Mapping[str, str], compress: bool = True) -> Packed | None:
    """The archive of a run with these checkpoints (position -> payload, as stored), or
    None if it should not be archived (positions not 0..n-1, or over MAX_ARCHIVE_BYTES)."""
    framed = frame(checkpoints)
    if framed is None or len(framed) > MAX_ARCHIVE_BYTES:
        return None
    section = _compress(framed) if compress else framed
    codec = ZLIB if compress else PLAIN
    head = b"%s%s%d:%s" % (MAGIC, codec, len(section), section)
    return Packed(head, hashlib.sha1(framed).hexdigest())


def _compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEM_LEVEL)
    return compressor.compress(data) + compressor.flush()


def unpack(value: bytes) -> tuple[dict[str, str], list[str]]:
    """The checkpoints (position -> payload) and the raw trace entries of an archive.

    Raises:
        CheckpointDecodeError: the value is not an archive this version can read.
    """
    try:
        if value[:2] != MAGIC or value[2:3] not in (ZLIB, PLAIN):
            raise ValueError("unknown archive format")
        colon = value.index(b":", 3)
        size = int(value[3:colon])
        start = colon + 1
        section = value[start:start + size]
        if len(section) != size:
            raise ValueError("truncated archive")
        framed = zlib.decompress(section) if value[2:3] == ZLIB else section
        checkpoints = _unframe(framed)
        rest = value[start + size:]
        trace = rest.decode().split("\n") if rest else []
    except (ValueError, zlib.error, UnicodeDecodeError) as exc:
        raise CheckpointDecodeError(
            f"a run archive could not be read ({exc}): it was written by another program "
            "or a newer celery-durable") from exc
    return checkpoints, trace


def _unframe(framed: bytes) -> dict[str, str]:
    checkpoints: dict[str, str] = {}
    at = 0
    while at < len(framed):
        colon = framed.index(b":", at)
        size = int(framed[at:colon])
        payload = framed[colon + 1:colon + 1 + size]
        if len(payload) != size:
            raise ValueError("truncated checkpoint in archive")
        checkpoints[str(len(checkpoints))] = payload.decode()
        at = colon + 1 + size
    return checkpoints
