"""Start research runs for several tenants; one LLM call is rate-limited.

    python run.py [--tenants acme,acme,globex] [--rate-limit-at 7] [--timeout SECONDS]

Each run makes 20 LLM calls. The first run's call at iteration ``--rate-limit-at`` gets a
429: its attempt fails, and the retry replays iterations 0..k-1 and calls the LLM again from
k. Runs of the same tenant never run at once (``concurrency_key``); other tenants' runs go
on meanwhile. Exits 1 unless every run completed, the LLM was called once per iteration
(twice for the rate-limited one) and no tenant ever had two calls in flight.
"""

from __future__ import annotations

import argparse
import sys
import uuid

import llm
from proj import app
from tasks import research

from celery_durable import RunStatus
from celery_durable.testing import wait_for_run

ITERATIONS = 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", default="acme,acme,globex")
    parser.add_argument("--rate-limit-at", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    tenants = args.tenants.split(",")
    started = []
    for n, tenant in enumerate(tenants):
        session = f"{tenant}-{uuid.uuid4().hex[:6]}"
        limited = args.rate_limit_at if n == 0 else None
        result = research.delay(tenant, session, "How do durable workflows checkpoint?",
                                ITERATIONS, rate_limit_at=limited)
        started.append((tenant, session, limited, result.id))
        print(f"started {session} (tenant {tenant}): run {result.id}", flush=True)
    ok = True
    for _tenant, session, limited, run_id in started:
        run = wait_for_run(app, run_id, timeout=args.timeout)
        calls = llm.calls(session)
        expected = sorted([*range(ITERATIONS), *([limited] if limited is not None else [])])
        good = run.status is RunStatus.COMPLETED and sorted(calls) == expected
        ok = ok and good
        again = [i for i in set(calls) if calls.count(i) > 1]
        print(f"{session}: {run.status.value} after {run.attempt} attempt(s); "
              f"{len(calls)} LLM calls for {ITERATIONS} iterations; called again: {again}")
    for tenant in sorted(set(tenants)):
        most = llm.max_active(tenant)
        ok = ok and most == 1
        print(f"tenant {tenant}: at most {most} call(s) in flight at once")
    print("resumed at the rate-limited iteration" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
