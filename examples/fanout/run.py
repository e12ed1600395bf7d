"""Process an album of 100 images and check the fan-out.

    python run.py [ALBUM_ID] [--count N] [--timeout SECONDS]

Exits 1 unless the album completed, its thumbnails are in image order and no more than 4
were ever rendered at once (the ``images`` queue limit).
"""

from __future__ import annotations

import argparse
import sys
import uuid

from proj import app
from tasks import db, process_album

from celery_durable import DurableClient, RunStatus
from celery_durable.testing import wait_for_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("album_id", nargs="?", default=f"album-{uuid.uuid4().hex[:6]}")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    limit = app.conf.durable_queue_limits["images"]
    result = process_album.delay(args.album_id, args.count)
    print(f"album {args.album_id}: run {result.id}, {args.count} children", flush=True)
    run = wait_for_run(app, result.id, timeout=args.timeout)
    paths = (run.result or {}).get("thumbnails", [])
    in_order = paths == [f"thumbs/{args.album_id}/{i:03d}.webp" for i in range(args.count)]
    most = int(db.zscore("fanout:max-active", args.album_id) or 0)
    print(f"{run.status.value}: {len(paths)} thumbnails, in order: {in_order}; "
          f"{len(DurableClient(app).get_run(run.id).children)} child runs")
    print(f"at most {most} thumbnails rendered at once (queue limit {limit})")
    ok = run.status is RunStatus.COMPLETED and in_order and 1 <= most <= limit
    print("fan-out done" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
