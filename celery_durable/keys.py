"""KeySpace: every Redis key celery-durable writes is built here, and nowhere else.

Per-run keys carry the run id as a hash tag, so all of a run's keys live in one Redis Cluster
slot and one script can update them atomically (``P`` is ``durable_key_prefix``)::

    P{<run_id>}:run      hash    the run record (status, task, args, lease, attempt, result,
                                 error); TTL: active TTL while unfinished, retention after
    P{<run_id>}:steps    hash    checkpoints: field = step position ("0", "1", ...),
                                 value = JSON {"id", "v", "t0", "t1", "a"}; same TTL
    P{<run_id>}:trace    list    trace entries, JSON [at_ms, steps, type, field, value, ...]
                                 (lua/_trace.lua), the newest durable_trace_maxlen; same TTL
    P{<run_id>}:archive  string  a completed run's checkpoints and trace entries packed in
                                 one value (archive.py), replacing its steps hash and the
                                 trace list of that moment; entries appended later go to
                                 a new trace list; same TTL (the retention)
    P{<run_id>}:children set     ids of the child runs it started; active TTL
    P{<run_id>}:progress hash    progress saved inside a running step: field = step
                                 position, value = JSON {"v", "ms", "a"}; same TTL as the run
    P{<run_id>}:blobs    hash    step results above durable_offload_bytes: field = step
                                 position, value = the encoded result; same TTL as the run

Global indexes (other slots; updated in the same round trip as the per-run script that
changed the run, but not atomically with it: readers re-check the run hash)::

    Pindex:runs              zset  run id -> created (ms); trimmed to the retention window
    Pindex:status:<status>   zset  run id -> last update (ms), one set per status
    Pindex:task:<task name>  zset  run id -> created (ms)

Idempotency keys (scoped per task)::

    Pidem:<task name>:<key>  string  JSON {"run": run id, "fp": argument fingerprint,
                                     "ms": claimed at}; TTL: the key's idempotency TTL

Concurrency limits (one Cluster slot per limit, tagged by its base name: "task:<task>" or
"queue:<queue>"; <sub> is the concurrency key, "_" for none)::

    Plimit:{<base>}:config          hash  "limit" -> runtime override of the coded limit
    Plimit:{<base>}:<sub>:holders   zset  run id -> slot lease expiry (ms)
    Plimit:{<base>}:<sub>:parked    zset  run id -> queue order: order number (fair across
                                          fairness keys) minus the priority boost
    Plimit:{<base>}:<sub>:woken     zset  run id -> hand-over expiry (ms)
    Plimit:{<base>}:<sub>:info      hash  run id -> JSON needed to re-publish a parked run
    Plimit:{<base>}:<sub>:messages  hash  run id -> the broker message of a parked run,
                                          "<length of list key>:<list key><body>" (the
                                          store is the broker's server and db), put on the
                                          queue by the release that hands it a slot
    Plimit:{<base>}:<sub>:fair      hash  virtual time, last order number per fairness key,
                                          order number and key of each parked run
    Plimits                         set   JSON [base, sub, default limit] of limits with
                                          waiting runs (for the safety sweep)
    (all TTL'd: durable_active_ttl_s, refreshed on use)

Scheduled runs (celery_durable.beat)::

    Pbeat:<entry>:ticks      zset  tick (UTC ISO 8601) -> when a beat claimed it (ms); removed
                                   once its run is recorded; TTL: the ticks' key TTL

Rate limits (one Cluster slot per limit, tagged by its base name: "task:<task>" or
"step:<step>"; <sub> is the rate key, "_" for none)::

    Prate:{<base>}:config     hash    "count", "period_ms", "burst": runtime override of the
                                      coded rate; no TTL (set by an operator, deleted by one)
    Prate:{<base>}:<sub>      string  GCRA theoretical arrival time (ms, when the limit is
                                      idle again); TTL: until then + one period
    Prate:{<base>}:<sub>:parked  zset  run id -> queue order of runs waiting for a turn
    Prate:{<base>}:<sub>:info    hash  run id -> JSON to publish it; "_spec" -> coded rate
    Prate:{<base>}:<sub>:fair    hash  the queue's order bookkeeping (as for limits)
    Prate:{<base>}:<sub>:handed  zset  run id -> hand-over expiry (ms): handed a turn, not
                                       yet confirmed published by its dispatcher
    (the queue keys TTL'd: durable_active_ttl_s, refreshed on use)
    Prate-timers              zset  JSON [base, sub] of a rate queue -> when its dispatcher
                                    should run (ms); taken with ZREM by exactly one worker
    Prate-queues              set   JSON [base, sub] of rate queues with waiting runs (for
                                    the safety sweep and the operators' views)

Debounce (one Cluster slot per task and debounce key)::

    Pdebounce:{<task>:<key>}  hash  the open burst: "run" (its run id), "due" (when it may
                                    start, ms), "first" (first call, ms), "info" (resume
                                    data of the last call, or the first), "calls"; deleted
                                    when the run starts; TTL: due + durable_active_ttl_s
    Pdebounce-timers          zset  debounce hash key -> when to look at it again (ms);
                                    taken with ZREM by exactly one dispatcher

Durable waits::

    Ptimers                  zset  run id -> when to publish it again (ms): sleeps, wait
                                   timeouts, long retry backoffs; dispatched exactly once
    Pevent:{<key>}:mailbox   list  event payloads sent to <key> and not yet taken (FIFO)
    Pevent:{<key>}:waiters   zset  run id -> wait deadline (ms, +inf for none)
    Pevent:{<key>}:taken     hash  "<run id>:<step position>" -> the payload that wait took
    (the event keys share the event key's slot; TTL durable_event_ttl_s, refreshed on use)

Worker coordination (heartbeat and reaper)::

    Pworkers                 zset  worker id -> last heartbeat (ms)
    Pworker:<worker id>:runs set   runs whose lease this worker took (members may be stale)
    Pleases                  zset  run id -> lease expiry (ms), a candidate list for the
                                   reaper (the run hash holds the authoritative expiry)
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import RunStatus


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run, in the order every per-run script takes them (KEYS[1..6]).

    Scripts that set the run's TTL set it on every key they are given, so a run's keys
    always expire together."""

    run: str
    steps: str
    trace: str
    progress: str
    blobs: str
    archive: str

    def as_list(self) -> list[str]:
        return [self.run, self.steps, self.trace, self.progress, self.blobs, self.archive]


@dataclass(frozen=True, slots=True)
class LimitKeys:
    """The keys of one concurrency limit, in the order slots.lua takes them."""

    config: str
    holders: str
    parked: str
    woken: str
    info: str
    fair: str
    #: Messages of parked runs, ready to be put on their queue by the release that hands
    #: them a slot (one Redis server shared with the broker: see publisher.capture).
    messages: str

    def as_list(self) -> list[str]:
        return [self.config, self.holders, self.parked, self.woken, self.info, self.fair,
                self.messages]


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds key names from the configured prefix; does no I/O."""

    prefix: str

    def run(self, run_id: str) -> RunKeys:
        base = f"{self.prefix}{{{run_id}}}"
        return RunKeys(run=f"{base}:run", steps=f"{base}:steps", trace=f"{base}:trace",
                       progress=f"{base}:progress", blobs=f"{base}:blobs",
                       archive=f"{base}:archive")

    def children(self, run_id: str) -> str:
        return f"{self.prefix}{{{run_id}}}:children"

    @property
    def all_runs(self) -> str:
        return f"{self.prefix}index:runs"

    def status_index(self, status: RunStatus | str) -> str:
        return f"{self.prefix}index:status:{RunStatus(status).value}"

    def task_index(self, task_name: str) -> str:
        return f"{self.prefix}index:task:{task_name}"

    def limit(self, base: str, sub: str) -> LimitKeys:
        tag = f"{self.prefix}limit:{{{base}}}"
        return LimitKeys(config=f"{tag}:config", holders=f"{tag}:{sub}:holders",
                         parked=f"{tag}:{sub}:parked", woken=f"{tag}:{sub}:woken",
                         info=f"{tag}:{sub}:info", fair=f"{tag}:{sub}:fair",
                         messages=f"{tag}:{sub}:messages")

    def rate(self, base: str, sub: str) -> list[str]:
        """Config hash and state of rate limit ``base`` for rate key ``sub`` (the order
        rate.lua takes them)."""
        tag = f"{self.prefix}rate:{{{base}}}"
        return [f"{tag}:config", f"{tag}:{sub}"]

    def rate_queue(self, base: str, sub: str) -> list[str]:
        """Every key of rate limit ``base`` for rate key ``sub``, with its queue of waiting
        runs (the order rate.lua takes them: config, state, parked, info, fair, handed)."""
        config, state = self.rate(base, sub)
        return [config, state, f"{state}:parked", f"{state}:info", f"{state}:fair",
                f"{state}:handed"]

    @property
    def rate_timers(self) -> str:
        return f"{self.prefix}rate-timers"

    @property
    def rate_queues(self) -> str:
        return f"{self.prefix}rate-queues"

    @property
    def limits(self) -> str:
        return f"{self.prefix}limits"

    def debounce(self, task_name: str, key: str) -> str:
        """The open burst of calls of ``task_name`` with debounce key ``key``."""
        return f"{self.prefix}debounce:{{{task_name}:{key}}}"

    @property
    def debounce_timers(self) -> str:
        return f"{self.prefix}debounce-timers"

    def idempotency(self, task_name: str, key: str) -> str:
        return f"{self.prefix}idem:{task_name}:{key}"

    def beat_ticks(self, entry: str) -> str:
        """Ticks of beat entry ``entry`` whose run may not be published yet."""
        return f"{self.prefix}beat:{entry}:ticks"

    def event(self, key: str) -> list[str]:
        """Mailbox, waiters and taken keys of event key ``key`` (the order the event
        scripts take them)."""
        tag = f"{self.prefix}event:{{{key}}}"
        return [f"{tag}:mailbox", f"{tag}:waiters", f"{tag}:taken"]

    @property
    def timers(self) -> str:
        return f"{self.prefix}timers"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    def worker_runs(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}:runs"

    @property
    def leases(self) -> str:
        return f"{self.prefix}leases"

    def index_pattern(self) -> str:
        """A SCAN pattern matching every index key (for maintenance)."""
        return f"{self.prefix}index:*"
