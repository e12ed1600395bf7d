"""Submit expenses and decide on them from Python.

    python run.py submit REQUEST_ID AMOUNT_CENTS     # prints the run id; the run waits
    python run.py approve REQUEST_ID --by NAME       # DurableClient.send_event
    python run.py reject REQUEST_ID --by NAME [--note TEXT]
    python run.py status RUN_ID                      # status, and the result once ended

The same decision can come from the CLI (``celery -A proj durable send-event expense:ID
--data '{"approved": true, "by": "NAME"}'``) or from Flower's Runs page.
"""

from __future__ import annotations

import argparse
import json
import sys

from proj import app
from tasks import Decision, expense_approval

from celery_durable import DurableClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit")
    submit.add_argument("request_id")
    submit.add_argument("amount_cents", type=int)
    for name in ("approve", "reject"):
        decide = sub.add_parser(name)
        decide.add_argument("request_id")
        decide.add_argument("--by", required=True)
        decide.add_argument("--note", default="")
    status = sub.add_parser("status")
    status.add_argument("run_id")
    args = parser.parse_args()

    client = DurableClient(app)
    if args.command == "submit":
        result = expense_approval.delay(args.request_id, args.amount_cents)
        print(f"submitted expense {args.request_id}: run {result.id}")
    elif args.command in ("approve", "reject"):
        decision = Decision(approved=args.command == "approve", by=args.by, note=args.note)
        woken = client.send_event(f"expense:{args.request_id}", decision.model_dump())
        print(f"{args.command}d expense {args.request_id}; woke {len(woken)} run(s)")
    else:
        run = client.get_run(args.run_id)
        print(f"run {run.id}: {run.status.value}")
        if run.status.is_terminal:
            print(json.dumps(run.result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
