-- cancel_run.lua: cancel a run that has not ended: it becomes 'cancelled' at once, and the
-- fencing token moves on, so a running attempt is stopped at its next step boundary.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace list    P{<run_id>}:trace
-- KEYS[4] progress hash P{<run_id>}:progress  KEYS[5] blobs hash P{<run_id>}:blobs
-- KEYS[6] archive       P{<run_id>}:archive  (a completed run's, see _archive.lua)
--          (only their TTL is set here)
-- ARGV[1] now_ms  ARGV[2] retention (ms)  ARGV[3] trace maxlen  ARGV[4] reason
-- Returns the previous status ('' if the run does not exist); a run that already ended is
-- left as it is and its status returned.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return status end
redis.call('HINCRBY', KEYS[1], 'lease_token', 1)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_ms', ARGV[1], 'updated_ms', ARGV[1],
           'lease_owner', '', 'lease_nonce', '', 'lease_expires_ms', 0)
trace_append(KEYS[1], KEYS[3], ARGV[3], 'type', 'run_cancelled',
             'reason', ARGV[4])
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return status
