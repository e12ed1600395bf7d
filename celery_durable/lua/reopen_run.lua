-- reopen_run.lua: give a failed or cancelled run another go from its last checkpoint
-- (replay): status 'pending', attempt budget and crash count reset, error cleared.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace list    P{<run_id>}:trace
-- KEYS[4] progress hash P{<run_id>}:progress  KEYS[5] blobs hash P{<run_id>}:blobs
-- KEYS[6] archive       P{<run_id>}:archive  (a completed run's, see _archive.lua)
--          (only their TTL is set here)
-- ARGV[1] now_ms  ARGV[2] active TTL (ms)  ARGV[3] trace maxlen
-- Returns the previous status ('' if the run does not exist); only 'failed' and
-- 'cancelled' runs are reopened.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'failed' and status ~= 'cancelled' then return status end
redis.call('HINCRBY', KEYS[1], 'lease_token', 1)
redis.call('HSET', KEYS[1], 'status', 'pending', 'failures', 0, 'crashes', 0,
           'updated_ms', ARGV[1], 'lease_owner', '', 'lease_nonce', '', 'lease_expires_ms', 0)
redis.call('HDEL', KEYS[1], 'error', 'finished_ms', 'result')
trace_append(KEYS[1], KEYS[3], ARGV[3], 'type', 'run_replayed',
             'previous', status)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return status
