-- extend_timeout.lua: move a running run's run_timeout deadline later (never earlier).
-- Fenced: only the attempt holding the current lease may extend it. The deadline is kept
-- in the run record, so later attempts (and the timer of a suspended run) honour it.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] trace list    P{<run_id>}:trace
-- ARGV[1] lease token  ARGV[2] requested deadline (epoch ms)
-- ARGV[3] the deadline the attempt knows (epoch ms: created + run_timeout, or an earlier
--         extension)  ARGV[4] trace maxlen  ARGV[5] now_ms
-- Returns the deadline now in force (epoch ms), -1 if the lease token is stale, -2 if the
-- run is no longer running.
local cur = redis.call('HMGET', KEYS[1], 'lease_token', 'status', 'deadline_ms')
if cur[1] ~= ARGV[1] then return -1 end
if cur[2] ~= 'running' then return -2 end
local known = math.max(tonumber(cur[3] or '0'), tonumber(ARGV[3]))
local wanted = tonumber(ARGV[2])
if wanted <= known then return known end
redis.call('HSET', KEYS[1], 'deadline_ms', ARGV[2], 'updated_ms', ARGV[5])
trace_append(KEYS[1], KEYS[2], ARGV[4], 'type', 'timeout_extended',
             'deadline_ms', ARGV[2], 'previous_ms', known)
return wanted
