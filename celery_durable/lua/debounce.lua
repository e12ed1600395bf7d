-- debounce.lua: a burst of calls with one debounce key makes one run, started once the
-- calls have paused for the quiet period (or the longest wait has passed).
-- KEYS[1] debounce hash  P debounce:{<task>:<key>}
--   run: the run the burst makes   due: when it may start (ms)   first: first call (ms)
--   info: resume data of the run (the last call's, or the first's)   calls: calls so far
-- ARGV[1] op: 'call' | 'fire'   ARGV[2] now_ms
-- call: ARGV[3] new run id (used if no burst is open)  ARGV[4] quiet period (ms)
--       ARGV[5] longest wait from the first call (ms, 0 = none)  ARGV[6] 'last' | 'first'
--       ARGV[7] resume data of this call  ARGV[8] TTL (ms) of the hash past its due time
--   Returns {run id, 1 if this call opened the burst else 0, due_ms, calls}.
-- fire: ARGV[3] the run id the timer fired for
--   Returns {'fire', resume data, calls} and closes the burst (later calls open a new
--   one), {'wait', due_ms} if calls came in since the timer was set, or {'gone'} if the
--   burst is not this run's (already fired).
local key, op, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
if op == 'fire' then
  local f = redis.call('HMGET', key, 'run', 'due', 'info', 'calls')
  if f[1] ~= ARGV[3] then return {'gone'} end
  if tonumber(f[2]) > now then return {'wait', f[2]} end
  redis.call('DEL', key)
  return {'fire', f[3], f[4]}
end
local f = redis.call('HMGET', key, 'run', 'first')
local run, first, opened = f[1], tonumber(f[2] or ARGV[2]), 0
if not run then
  run, opened = ARGV[3], 1
  redis.call('HSET', key, 'run', run, 'first', ARGV[2], 'info', ARGV[7], 'calls', 0)
elseif ARGV[6] == 'last' then
  redis.call('HSET', key, 'info', ARGV[7])
end
local due = now + tonumber(ARGV[4])
local longest = tonumber(ARGV[5])
if longest > 0 and due > first + longest then due = first + longest end
local calls = redis.call('HINCRBY', key, 'calls', 1)
redis.call('HSET', key, 'due', due)
redis.call('PEXPIRE', key, due - now + tonumber(ARGV[8]))
return {run, opened, due, calls}
