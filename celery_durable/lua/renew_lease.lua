-- renew_lease.lua: extend (or release) the lease of a run this worker is executing.
-- Only the worker that holds the lease can change it, and only while the run is running.
-- KEYS[1] run hash  P{<run_id>}:run
-- ARGV[1] owner (worker id)  ARGV[2] new lease expiry (epoch ms; 0 releases the lease so
-- that a redelivered message can start the next attempt at once)
-- Returns 1 if changed, 0 if the lease is not this worker's (ended, taken over).
local cur = redis.call('HMGET', KEYS[1], 'lease_owner', 'status')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'lease_expires_ms', ARGV[2])
return 1
