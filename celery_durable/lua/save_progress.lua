-- save_progress.lua: save the progress of the step an attempt is executing (fenced).
-- Only the attempt holding the current lease may write, and only for the next uncommitted
-- position (the step it is executing); the value replaces the previous one of that step.
-- KEYS[1] run hash       P{<run_id>}:run
-- KEYS[2] progress hash  P{<run_id>}:progress
-- ARGV[1] lease token  ARGV[2] step position  ARGV[3] progress record (JSON {"v","ms","a"})
-- Returns 1 if saved, -1 if the lease token is stale, -2 if the run is no longer running,
--        -3 if the position is already committed or not the step being executed.
local cur = redis.call('HMGET', KEYS[1], 'lease_token', 'status', 'step_count')
if cur[1] ~= ARGV[1] then return -1 end
if cur[2] ~= 'running' then return -2 end
if tonumber(ARGV[2]) ~= tonumber(cur[3] or '0') then return -3 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
-- Same TTL as the run (claims and ends refresh it with the other keys of the run).
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
return 1
