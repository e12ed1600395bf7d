-- claim_attempt.lua: start an attempt: take the run's lease and load its checkpoints.
-- The lease is fenced: every claim increments lease_token, and every later write of the
-- attempt must present it, so an attempt that was taken over can never commit.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace stream  P{<run_id>}:trace
-- ARGV[1] now_ms  ARGV[2] owner (worker name)  ARGV[3] claim nonce (unique per attempt)
-- ARGV[4] lease TTL (ms)  ARGV[5] task name  ARGV[6] active TTL (ms)  ARGV[7] trace maxlen
-- ARGV[8] args (JSON)  ARGV[9] kwargs (JSON)  ARGV[10] queue (used if the run is new)
-- Returns one of
--   {'done', status, result}                  the run is completed/failed/cancelled
--   {'busy', owner, lease_expires_ms}         another attempt holds a live lease
--   {'claimed', token, attempt, prev_status, pos1, payload1, pos2, payload2, ...}
local run = KEYS[1]
local now = tonumber(ARGV[1])
local status = redis.call('HGET', run, 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {'done', status, redis.call('HGET', run, 'result') or ''}
end
local fields = redis.call('HMGET', run, 'lease_nonce', 'lease_expires_ms', 'lease_owner',
                          'lease_token', 'attempt')
local token, attempt
if fields[1] == ARGV[3] then
  -- The same claim sent twice (a client-side retry): answer as the first time.
  token, attempt = tonumber(fields[4]), tonumber(fields[5])
else
  if tonumber(fields[2] or '0') > now then
    return {'busy', fields[3] or '', fields[2]}
  end
  if not status then
    status = 'pending'
    redis.call('HSET', run, 'task', ARGV[5], 'args', ARGV[8], 'kwargs', ARGV[9],
               'queue', ARGV[10], 'created_ms', ARGV[1], 'step_count', 0)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'type', 'run_created',
               'task', ARGV[5])
  end
  token = redis.call('HINCRBY', run, 'lease_token', 1)
  attempt = redis.call('HINCRBY', run, 'attempt', 1)
  redis.call('HSET', run, 'status', 'running', 'lease_owner', ARGV[2], 'lease_nonce', ARGV[3],
             'lease_expires_ms', now + tonumber(ARGV[4]), 'updated_ms', ARGV[1],
             'attempt_started_ms', ARGV[1])
  redis.call('HSETNX', run, 'started_ms', ARGV[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'type', 'attempt_started',
             'attempt', attempt, 'worker', ARGV[2])
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
end
local reply = {'claimed', token, attempt, status}
local steps = redis.call('HGETALL', KEYS[2])
for i = 1, #steps do reply[#reply + 1] = steps[i] end
return reply
