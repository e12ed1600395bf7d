#!/usr/bin/env bash
# Every `celery -A proj durable` command, on this example's runs (docs/cli.md shows these
# lines). Run it from this directory while a worker runs (celery -A proj worker -P solo),
# with the worker's REDIS_URL. It leaves no run waiting.
set -euo pipefail
id="tour-$$"

status_of() {  # status_of RUN_ID: the run's status, from `durable show --json`
  celery -A proj durable show "$1" --json | python -c 'import json, sys; print(json.load(sys.stdin)["status"])'
}
wait_status() {  # wait_status RUN_ID STATUS: until the run has STATUS, at most 60 s
  local deadline=$((SECONDS + 60))
  until [ "$(status_of "$1")" = "$2" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "run $1 never became $2" >&2; exit 1; }
    sleep 0.2
  done
}
published() {  # published OUTPUT: the run id in "published run <id>"
  sed -n 's/^published run //p' <<<"$1"
}

run=$(python run.py submit "$id" 1200 | sed -n 's/.*: run //p')
wait_status "$run" suspended

# Runs, newest first, filtered; one JSON object per line with --json.
celery -A proj durable runs --status suspended --limit 10
celery -A proj durable runs --task tasks.expense_approval --json
# In-flight runs per task and code version (retire a version when none is left).
celery -A proj durable versions --task tasks.expense_approval
celery -A proj durable runs --in-flight --json
# One run: arguments, steps with the attempt that committed them, errors, logs.
celery -A proj durable show "$run"

# Deliver the decision the run waits for.
celery -A proj durable send-event "expense:$id" --data '{"approved": true, "by": "alice"}'
wait_status "$run" completed

# A payload from a file; sent before anything waits on the key, it is kept for the next wait.
decision=$(mktemp)
echo '{"approved": false, "by": "bob", "note": "over budget"}' > "$decision"
celery -A proj durable send-event "expense:$id-2" --data-file "$decision"
rm -f "$decision"
second=$(python run.py submit "$id-2" 99000 | sed -n 's/.*: run //p')
wait_status "$second" completed

# Fork a new run from a step of a finished run: steps before it are kept, it runs again.
fork=$(published "$(celery -A proj durable replay "$run" --from-step decision)")
wait_status "$fork" suspended
# Cancel a run (a waiting one at once, a running one at its next step) ...
celery -A proj durable cancel "$fork"
# ... and run a cancelled or failed run again, from its last committed step.
celery -A proj durable replay "$fork"
wait_status "$fork" suspended
celery -A proj durable cancel "$fork"

# Concurrency and rate limits: all of them, then one changed at runtime (0 pauses it).
celery -A proj durable limits tasks.expense_approval 20
celery -A proj durable limits
celery -A proj durable limits tasks.expense_approval --json
# A rate limit changed at runtime, then back to the rate in code.
celery -A proj durable limits step:notify_approver --rate 240/m --burst 40
celery -A proj durable limits step:notify_approver --rate coded

# Housekeeping: drop index entries of expired runs; check Redis and the settings.
celery -A proj durable gc
celery -A proj durable doctor
