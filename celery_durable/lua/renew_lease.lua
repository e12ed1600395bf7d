-- renew_lease.lua: extend (or release) the leases of runs this worker is executing.
-- Only the worker that holds a run's lease can change it, and only while the run is
-- running. Takes any number of run hashes at once: one call per heartbeat on a single
-- Redis; one call per run (one key each) where keys must share a slot (Redis Cluster).
-- KEYS[1..n] run hashes  P{<run_id>}:run
-- ARGV[1] owner (worker id)  ARGV[2] new lease expiry (epoch ms; 0 releases the lease so
-- that a redelivered message can start the next attempt at once)
-- Returns how many leases were changed (others ended or were taken over).
local changed = 0
for i = 1, #KEYS do
  local cur = redis.call('HMGET', KEYS[i], 'lease_owner', 'status')
  if cur[1] == ARGV[1] and cur[2] == 'running' then
    redis.call('HSET', KEYS[i], 'lease_expires_ms', ARGV[2])
    changed = changed + 1
  end
end
return changed
