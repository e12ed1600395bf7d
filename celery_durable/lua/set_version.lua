-- set_version.lua: record that a run goes on with another version of its task's code.
-- Fenced: only the attempt holding the current lease may change the run's version.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] trace list    P{<run_id>}:trace
-- ARGV[1] lease token  ARGV[2] new version  ARGV[3] the version the attempt found
-- ARGV[4] trace maxlen  ARGV[5] now_ms
-- Returns 1 if changed, 0 if the run already had the new version, -1 if the lease token is
-- stale.
local cur = redis.call('HMGET', KEYS[1], 'lease_token', 'version')
if cur[1] ~= ARGV[1] then return -1 end
if cur[2] == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'updated_ms', ARGV[5])
trace_append(KEYS[1], KEYS[2], ARGV[4], 'type', 'version_changed',
             'from', ARGV[3], 'to', ARGV[2], 'policy', 'continue')
return 1
