-- claim_attempt.lua: start an attempt: take the run's lease (see below for the checkpoints).
-- The lease is fenced: every claim increments lease_token, and every later write of the
-- attempt must present it, so an attempt that was taken over can never commit.
-- A claim over a run still marked 'running' (its last attempt never ended: the worker died)
-- counts a crash; past ARGV[13] crashes the run fails instead of looping forever.
-- KEYS[1] run hash      P{<run_id>}:run
-- KEYS[2] steps hash    P{<run_id>}:steps
-- KEYS[3] trace list    P{<run_id>}:trace
-- KEYS[4] progress hash P{<run_id>}:progress  KEYS[5] blobs hash P{<run_id>}:blobs
-- KEYS[6] archive       P{<run_id>}:archive  (a completed run's, see _archive.lua)
--          (only their TTL is set here)
-- ARGV[1] now_ms  ARGV[2] owner (worker id)  ARGV[3] claim nonce (unique per attempt)
-- ARGV[4] lease TTL (ms)  ARGV[5] task name  ARGV[6] active TTL (ms)  ARGV[7] trace maxlen
-- ARGV[8] args (JSON)  ARGV[9] kwargs (JSON)  ARGV[10] queue (used if the run is new)
-- ARGV[11] pid of the executing process  ARGV[12] broker delivery tag ('' if unknown)
-- ARGV[13] max crashes  ARGV[14] retention (ms, for a run that fails here)
-- ARGV[15] pid of a process of this same worker known to be dead: its lease counts as
--          expired ('' if none; the caller checked the pid, which only this host can do)
-- ARGV[16] the code version of the claiming worker's task: recorded if the run has none
--          yet ('' records nothing)
-- KEYS[7..] (optional; one Redis server) the holders zsets of the concurrency limits the
--          attempt needs, and ARGV[17] the run id: the claim is refused unless the run
--          holds a slot of each (slots.lua's acquire, sent just before in the same round
--          trip, gave it one or parked the run).
-- Returns one of
--   {'done', status, result}                  the run is completed/failed/cancelled
--   {'noslot'}                                a limit of KEYS[7..] is full: not claimed
--   {'busy', owner, lease_expires_ms, pid}    another attempt holds a live lease
--   {'crashed', crashes}                      too many crashes: the run is now failed
--   {'claimed', token, attempt, prev_status ('new' if this claim created the run), crashes,
--    failures, created_ms, deadline_ms, version}
--   (failures: attempts that ended in an error, which the retry policy counts;
--    deadline_ms: an extended run_timeout deadline or ''; version: the recorded version)
-- The checkpoints are not read here: the caller sends HGETALL of the steps hash right
-- after this script in the same round trip. Once this claim has bumped the fencing token,
-- no other attempt can commit, so that HGETALL sees exactly the run's checkpoints, and
-- Redis serves it natively (building a Lua table of a 1,000-step hash and joining it cost
-- several times as much as the HGETALL itself).
local run = KEYS[1]
local now = tonumber(ARGV[1])
-- Every field the claim reads, in one call (each redis.call costs about as much as a
-- small command's whole server time).
local f = redis.call('HMGET', run, 'status', 'lease_nonce', 'lease_expires_ms', 'lease_owner',
                     'lease_token', 'attempt', 'crashes', 'lease_pid', 'started_ms', 'version',
                     'step_count', 'failures', 'created_ms', 'deadline_ms')
local status = f[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {'done', status, redis.call('HGET', run, 'result') or ''}
end
for i = 7, #KEYS do
  if not redis.call('ZSCORE', KEYS[i], ARGV[17]) then return {'noslot'} end
end
local token, attempt
local crashes = tonumber(f[7] or '0')
local created, version = f[13], f[10]
if f[2] == ARGV[3] then
  -- The same claim sent twice (a client-side retry): answer as the first time.
  token, attempt = tonumber(f[5]), tonumber(f[6])
else
  local dead_holder = ARGV[15] ~= '' and f[4] == ARGV[2] and f[8] == ARGV[15]
  -- A reaper holds a lease only while it puts the run back on its queue: take it.
  local reaper_held = string.sub(f[4] or '', 1, 7) == 'reaper:'
  if tonumber(f[3] or '0') > now and not dead_holder and not reaper_held then
    return {'busy', f[4] or '', f[3], f[8] or ''}
  end
  trace_steps[run] = tonumber(f[11] or '0') or 0
  if status == 'running' then
    crashes = redis.call('HINCRBY', run, 'crashes', 1)
    if crashes > tonumber(ARGV[13]) then
      local err = cjson.encode({
        error_type = 'celery_durable.errors.RunCrashedError',
        error_message = 'the run\'s worker died ' .. crashes .. ' times (last holder: ' ..
          (f[4] or '?') .. '); giving up. Raise durable_max_crashes if the task ' ..
          'legitimately needs more, or find what kills the worker (memory, time limits)',
        traceback = ''})
      redis.call('HSET', run, 'status', 'failed', 'finished_ms', ARGV[1], 'updated_ms', ARGV[1],
                 'error', err, 'lease_expires_ms', 0, 'lease_owner', '', 'lease_nonce', '')
      trace_append(KEYS[1], KEYS[3], ARGV[7], 'type', 'run_failed',
                   'crashes', crashes, 'error_type', 'celery_durable.errors.RunCrashedError',
                   'error_message', cjson.decode(err)['error_message'])
      for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[14]) end
      return {'crashed', crashes}
    end
    trace_append(KEYS[1], KEYS[3], ARGV[7], 'type', 'crash_detected',
                 'crashes', crashes, 'holder', f[4] or '')
  end
  token, attempt = tonumber(f[5] or '0') + 1, tonumber(f[6] or '0') + 1
  local set = {'lease_token', token, 'attempt', attempt, 'status', 'running',
               'lease_owner', ARGV[2], 'lease_nonce', ARGV[3],
               'lease_expires_ms', now + tonumber(ARGV[4]), 'updated_ms', ARGV[1],
               'attempt_started_ms', ARGV[1], 'lease_pid', ARGV[11]}
  if not status then
    -- Published without being recorded (send_task by name, or the producer lost Redis).
    status, created = 'new', ARGV[1]
    for _, v in ipairs({'task', ARGV[5], 'args', ARGV[8], 'kwargs', ARGV[9],
                        'queue', ARGV[10], 'created_ms', ARGV[1], 'step_count', 0}) do
      set[#set + 1] = v
    end
  end
  if ARGV[12] ~= '' then set[#set + 1] = 'delivery_tag'; set[#set + 1] = ARGV[12] end
  if not f[9] then set[#set + 1] = 'started_ms'; set[#set + 1] = ARGV[1] end
  if (ARGV[16] or '') ~= '' and not version then
    version = ARGV[16]
    set[#set + 1] = 'version'; set[#set + 1] = version
  end
  redis.call('HSET', run, unpack(set))
  if status == 'new' then
    trace_append(KEYS[1], KEYS[3], ARGV[7], 'type', 'run_created', 'task', ARGV[5])
  end
  trace_append(KEYS[1], KEYS[3], ARGV[7], 'type', 'attempt_started',
               'attempt', attempt, 'worker', ARGV[2], 'pid', ARGV[11])
  if attempt == 1 then
    -- Before its first attempt a run has only its hash and trace (create_run.lua): the
    -- other keys are written under a lease. Four calls fewer on the usual claim.
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  else
    for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
  end
end
return {'claimed', token, attempt, status, crashes, tonumber(f[12] or '0'),
        tonumber(created or ARGV[1]), f[14] or '', version or ''}
