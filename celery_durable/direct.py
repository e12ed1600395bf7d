"""DirectLine: the hot path's round trips on a connection each thread keeps.

A run's attempt makes three round trips to the checkpoint store (claim, one commit per
step, end). Through redis-py's client each one also takes a connection from the pool and
gives it back, with argument inspection and bookkeeping around both: measured on a 2-core
VM, about 50 us of a 150 us EVALSHA. DirectLine sends the same commands, packed by the
same connection class, on one connection per thread (and per process: a forked pool
process opens its own), so that cost is paid once. Everything else stays redis-py's: the
connection (TLS, auth, Sentinel's master lookup, health checks, RESP parsing, decoding)
and its retry policy (``connections._common``: a command is sent again after a connection
error, which every command celery-durable sends tolerates).

Only for a client with a connection pool (one server or Sentinel). A Redis Cluster client
routes each command by slot and keeps using redis-py's own path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
from hiredis import pack_command as _hiredis_pack
from redis.commands import CoreCommands
from redis.exceptions import DataError, ResponseError

from .spin import ReplyWait

#: Forks of this process so far, counted in the child: a thread-local connection made before
#: the last fork belongs to the parent (cheaper to compare than a getpid() per call).
_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_count_fork)


class CommandRecorder(CoreCommands):
    """Collects the commands redis-py's command methods would send (``zadd``, ``srem``,
    ``pexpire``...), to send them as one pipeline on a DirectLine."""

    _event_dispatcher: Any = None  # declared by the command mixins' typing; never used

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)


def _pack(conn: Any, commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """The wire form of ``commands``, as ``send_packed_command`` takes it. hiredis packs a
    whole command in C (str as UTF-8, int and float as redis-py writes them); redis-py's own
    packing encodes each argument in Python first, about four times the cost for the end
    of an attempt's 120 arguments. redis-py packs when the connection's encoding is not
    strict UTF-8."""
    encoder = conn.encoder
    if encoder.encoding.lower().replace("_", "-") != "utf-8" or encoder.encoding_errors != "strict":
        return list(conn.pack_commands(commands))
    try:
        return [b"".join([_hiredis_pack(tuple(command)) for command in commands])]
    except TypeError as exc:  # a bool or None: refused like redis-py's encoder does
        raise DataError(f"invalid argument in a Redis command: {exc}") from None


class DirectLine:
    """Sends commands on this thread's own connection of ``client``'s pool."""

    def __init__(self, client: Any) -> None:
        pool = getattr(client, "connection_pool", None)
        #: False for clients without a pool of their own (Redis Cluster): use redis-py.
        self.enabled = isinstance(client, redis.Redis) and pool is not None
        self._pool = pool
        self._local = threading.local()
        #: Whether the server skips replies on request (None: not asked yet).
        self._quiet: bool | None = None

    def _connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.forks != _forks[0]:
            # A connection inherited through fork belongs to the parent: never reuse it.
            conn = local.conn = self._pool.make_connection()  # type: ignore[union-attr]
            local.forks = _forks[0]
            local.wait = ReplyWait()
        return conn

    def call(self, *args: Any) -> Any:
        """One command; its reply, or the error reply raised (``ResponseError``)."""
        reply = self.pipeline([args])[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def execute_command(self, *args: Any) -> Any:
        """``call`` under redis-py's name, so that ``scripts.evalsha`` takes a DirectLine
        where it takes a client."""
        return self.call(*args)

    def script_load(self, script: str) -> str:
        """SCRIPT LOAD (for ``scripts.evalsha`` after a NOSCRIPT reply)."""
        return str(self.call("SCRIPT", "LOAD", script))

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Every command in one round trip; the replies in order, an error reply as its
        ``ResponseError`` in place (the caller decides; the connection stays in step).

        Raises:
            redis.ConnectionError, redis.TimeoutError: the server did not answer, after the
                connection's retries (each retry on a fresh connection).
        """
        conn = self._connection()
        wait: ReplyWait = self._local.wait

        def send() -> list[Any]:
            # A new or dropped connection runs its own handshake (a Sentinel-managed one
            # asks for the master first, which sending alone would skip). connect() does
            # nothing on a live one, through a retry wrapper that costs about as much as
            # packing the commands: skipped while the socket is open.
            if getattr(conn, "_sock", None) is None:
                conn.connect()
            conn.send_packed_command(_pack(conn, commands))
            wait.before_read(conn)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies

        return conn.retry.call_with_retry(send, lambda _error: conn.disconnect())  # type: ignore[no-any-return]

    def can_send_quietly(self) -> bool:
        """Whether the server skips replies on request (``CLIENT REPLY SKIP``, Redis 3.2+;
        a proxy or an ACL may refuse it). Asked once, on the first call."""
        if self._quiet is None:
            self._quiet = self._probe_quiet()
        return self._quiet

    def _probe_quiet(self) -> bool:
        conn = self._connection()

        def probe() -> bool:
            conn.connect()
            conn.send_packed_command(conn.pack_commands(
                [("CLIENT", "REPLY", "SKIP"), ("ECHO", "skipped"), ("ECHO", "answered")]))
            try:
                first = conn.read_response()
            except ResponseError:
                first = None  # CLIENT REPLY refused: both ECHO replies follow
            if first in (b"answered", "answered"):
                return True
            for _ in range(2 if first is None else 1):
                conn.read_response()
            return False

        return conn.retry.call_with_retry(probe, lambda _error: conn.disconnect())  # type: ignore[no-any-return]

    def send_quietly(self, commands: Sequence[Sequence[Any]]) -> None:
        """Send every command in one write and wait for nothing: each is preceded by
        ``CLIENT REPLY SKIP``, so the server sends no reply and the connection stays in
        step. For writes whose outcome nobody waits for; check :meth:`can_send_quietly`
        first. Not retried: after an error the commands may or may not have run.

        Raises:
            redis.ConnectionError, redis.TimeoutError: the commands could not be sent.
        """
        conn = self._connection()
        skip = ("CLIENT", "REPLY", "SKIP")
        conn.connect()
        try:
            conn.send_packed_command(_pack(
                conn, [part for command in commands for part in (skip, command)]))
        except BaseException:
            conn.disconnect()  # a partial write would leave the connection out of step
            raise

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.disconnect()
            self._local.conn = None
