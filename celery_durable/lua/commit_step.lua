-- commit_step.lua: record one step's checkpoint and the run's step count, atomically.
-- Idempotent (a re-sent commit of the same position changes nothing) and fenced (only the
-- attempt holding the current lease token may commit). Kept small: it runs once per step.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- ARGV[1] lease token  ARGV[2] position (0-based)  ARGV[3] checkpoint (JSON, which also
-- holds the attempt and the step's start/end times)  ARGV[4] step id ("fetch", "fetch#2")
-- ARGV[5] now_ms
-- KEYS[3] blobs hash P{<run_id>}:blobs and ARGV[6] the encoded result, only for a result
--         offloaded out of the checkpoint (durable_offload_bytes); written in the same call
-- The trace gets no entry: readers place the step_committed event from the checkpoint and
-- the step counts of the trace entries (see _trace.lua).
-- Returns 1 if committed, 0 if this position already had a checkpoint,
--        -1 if the lease token is stale (taken over), -2 if the run is no longer running,
--        -3 if the position is not the next one (a gap: the caller's replay is out of step).
local run = KEYS[1]
local cur = redis.call('HMGET', run, 'lease_token', 'status', 'step_count')
if cur[1] ~= ARGV[1] then return -1 end
if cur[2] ~= 'running' then return -2 end
local pos = tonumber(ARGV[2])
local count = tonumber(cur[3])
-- Positions are committed in order, so step_count says which ones exist.
if pos < count then return 0 end
if pos > count then return -3 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[6] then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', run))
end
if pos == 0 then
  -- The first checkpoint creates the steps hash: give it the run's TTL.
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', run))
end
redis.call('HSET', run, 'step_count', pos + 1, 'updated_ms', ARGV[5])
return 1
