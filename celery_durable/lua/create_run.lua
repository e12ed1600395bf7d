-- create_run.lua: record a new run as pending, unless it already exists (publish side).
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace list    P{<run_id>}:trace
-- KEYS[4] progress hash P{<run_id>}:progress  KEYS[5] blobs hash P{<run_id>}:blobs
-- KEYS[6] archive       P{<run_id>}:archive  (a completed run's, see _archive.lua)
--          (not written here: they do not exist yet)
-- ARGV[1] now_ms  ARGV[2] task name  ARGV[3] args (JSON)  ARGV[4] kwargs (JSON)
-- ARGV[5] queue  ARGV[6] active TTL (ms)  ARGV[7] trace maxlen
-- ARGV[8] canvas options (JSON: chain, callbacks, group, ...), '' for none
-- ARGV[9] idempotency key of the call ('' for none; shown by the admin views). A keyed run
--         is published before it is recorded, so its first claim may have created the run
--         hash already: the key is noted on an existing run too (nothing else is changed).
-- Returns 1 if the run was created, 0 if it existed (a duplicate publish or a retry).
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[9] and ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'idempotency_key', ARGV[9]) end
  return 0
end
redis.call('HSET', KEYS[1],
  'status', 'pending', 'task', ARGV[2], 'args', ARGV[3], 'kwargs', ARGV[4], 'queue', ARGV[5],
  'created_ms', ARGV[1], 'updated_ms', ARGV[1], 'attempt', 0, 'lease_token', 0,
  'lease_expires_ms', 0, 'step_count', 0)
if ARGV[8] and ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'canvas', ARGV[8]) end
if ARGV[9] and ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'idempotency_key', ARGV[9]) end
trace_append(KEYS[1], KEYS[3], ARGV[7], 'type', 'run_created', 'task', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
