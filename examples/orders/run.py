"""Place an order and print its run; with ``--crash``, kill the worker mid-charge.

    python run.py [ORDER_ID] [--crash] [--timeout SECONDS]

``--crash`` needs two workers on this host (``celery -A proj worker -c 1 -n a@%h`` and the
same with ``-n b@%h``). The gateway takes 3 s to confirm the charge; once it has made the
charge, and before the step commits, the script SIGKILLs the main process of the worker
holding the run. The other worker resumes the run: the stock reservation is replayed from
its checkpoint, the charge step runs again with the same ``step_key``, and the gateway
returns the first charge. Exits 1 unless the customer was charged exactly once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid

import services
from proj import app
from tasks import place_order

from celery_durable import DurableClient, RunInfo, RunStatus
from celery_durable.testing import wait_for_run

ITEMS = {"mug": 2, "tea": 1}


def kill_the_worker_mid_charge(run_id: str, order_id: str, timeout: float) -> int:
    """Wait until the gateway has charged (the step is not committed yet), then SIGKILL the
    main process of the worker holding the run; return its pid."""
    deadline = time.monotonic() + timeout
    while not services.charges(order_id):
        if time.monotonic() > deadline:
            raise SystemExit("the gateway never received the charge: is a worker running?")
        time.sleep(0.02)
    run = DurableClient(app).get_run(run_id)
    if any(s.name == "charge_payment" for s in run.steps) or not run.lease_owner:
        raise SystemExit("the charge step committed before the kill: nothing to show")
    pid = int(run.lease_owner.split("|")[1])
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"celery" not in f.read():
            raise SystemExit(f"process {pid} is not a Celery worker: not killing it")
    os.kill(pid, signal.SIGKILL)
    print(f"charged, not yet committed: SIGKILL to worker {run.lease_owner.split('|')[0]} "
          f"(pid {pid})", flush=True)
    return pid


def report(run: RunInfo, order_id: str) -> bool:
    print(f"run {run.id}: {run.status.value} after {run.attempt} attempt(s)")
    for s in run.steps:
        print(f"  {s.name:<18} committed by attempt {s.attempt}")
    made = services.charges(order_id)
    print(f"gateway: {services.calls(order_id, 'charge')} charge request(s), "
          f"{len(made)} charge(s) made: {made}")
    print(f"inventory: {services.calls(order_id, 'reserve')} reservation(s)")
    return (run.status is RunStatus.COMPLETED and len(made) == 1
            and services.calls(order_id, "reserve") == 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("order_id", nargs="?", default=f"o-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--crash", action="store_true")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    settle_s = 3.0 if args.crash else 0.0
    result = place_order.delay(args.order_id, ITEMS, settle_s=settle_s)
    print(f"placed order {args.order_id}: run {result.id}", flush=True)
    again = place_order.delay(args.order_id, ITEMS, settle_s=settle_s)  # "buy", again
    print(f"placed it again: {'the same run' if again.id == result.id else 'ANOTHER run'}",
          flush=True)
    if args.crash:
        kill_the_worker_mid_charge(result.id, args.order_id, args.timeout)
    run = wait_for_run(app, result.id, timeout=args.timeout)
    ok = report(run, args.order_id) and again.id == result.id
    print("charged exactly once" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
