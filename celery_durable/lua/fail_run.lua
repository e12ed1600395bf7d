-- fail_run.lua: fail a running run on behalf of the worker that holds its lease, when the
-- attempt could not end itself (Celery's hard time limit killed its pool process).
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace list    P{<run_id>}:trace
-- KEYS[4] progress hash P{<run_id>}:progress  KEYS[5] blobs hash P{<run_id>}:blobs
-- KEYS[6] archive       P{<run_id>}:archive  (a completed run's, see _archive.lua)
--          (only their TTL is set here)
-- ARGV[1] worker id (must hold the lease)  ARGV[2] now_ms  ARGV[3] retention (ms)
-- ARGV[4] trace maxlen  ARGV[5] error (JSON)  ARGV[6] error type  ARGV[7] error message
-- Returns 1 if the run was failed, 0 if it is not running under this worker's lease.
local cur = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if cur[1] ~= 'running' or cur[2] ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'lease_token', 1)
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_ms', ARGV[2], 'updated_ms', ARGV[2],
           'error', ARGV[5], 'lease_owner', '', 'lease_nonce', '', 'lease_expires_ms', 0)
redis.call('HINCRBY', KEYS[1], 'failures', 1)
trace_append(KEYS[1], KEYS[3], ARGV[4], 'type', 'run_failed',
             'error_type', ARGV[6], 'error_message', ARGV[7])
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return 1
