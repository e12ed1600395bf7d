-- reap_run.lua: take a stalled run away from a dead (or silent) worker, exactly once.
-- Fences the old attempt (lease_token + 1) and gives the lease to the reaper for a grace
-- period: a claim takes a reaper's lease at once, but if the reaper dies before it has put
-- the run's message back, the lease expires and another reaper resumes the run. The status
-- stays 'running' so that the next claim counts the crash. Returns what the reaper needs to
-- put the run's message back on its queue.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] trace list    P{<run_id>}:trace
-- ARGV[1] now_ms  ARGV[2] dead owner: reap only if the lease holder is this worker id;
--         '' = reap only if the lease has expired  ARGV[3] reaper id  ARGV[4] trace maxlen
-- ARGV[5] grace (ms) the reaper holds the lease while it requeues the run
-- Returns {} if there is nothing to reap, else
--   {delivery_tag, task, args, kwargs, queue, holder, canvas options}
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'lease_expires_ms',
                     'delivery_tag', 'task', 'args', 'kwargs', 'queue', 'canvas')
if f[1] ~= 'running' or not f[2] or f[2] == '' then return {} end
if ARGV[2] ~= '' then
  if f[2] ~= ARGV[2] then return {} end
elseif tonumber(f[3] or '0') > tonumber(ARGV[1]) then
  return {}
end
redis.call('HINCRBY', KEYS[1], 'lease_token', 1)
redis.call('HSET', KEYS[1], 'lease_owner', 'reaper:' .. ARGV[3], 'lease_nonce', '',
           'lease_expires_ms', tonumber(ARGV[1]) + tonumber(ARGV[5]), 'updated_ms', ARGV[1])
trace_append(KEYS[1], KEYS[2], ARGV[4], 'type', 'run_reaped',
             'holder', f[2], 'reaper', ARGV[3])
return {f[4] or '', f[5] or '', f[6] or '[]', f[7] or '{}', f[8] or '', f[2], f[9] or ''}
